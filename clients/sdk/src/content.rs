//! The application payload carried inside MLS application messages.

use serde::{Deserialize, Serialize};

/// What an application message carries: JSON tagged by `type`.
///
/// New kinds (cards for bots, ...) are added as new variants; a payload with a
/// type this version does not know decodes to [`Content::Unknown`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// Plain text: `{"type":"text","body":"..."}`.
    Text { body: String },
    /// A structured card from a bot (lab results, summary):
    /// `{"type":"card","card":{"kind":"lab_results",...}}`.
    Card { card: tonari_wire::Card },
    /// A payload of a type this SDK version does not know.
    #[serde(other)]
    Unknown,
}

impl Content {
    /// A text message.
    pub fn text(body: impl Into<String>) -> Self {
        Content::Text { body: body.into() }
    }

    /// The text shown for this content in a plain-text UI.
    pub fn display_text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Content::Text { body } => body.as_str().into(),
            Content::Card { card } => card.render_text().into(),
            Content::Unknown => "(unsupported content)".into(),
        }
    }

    /// The card, when this content is one.
    pub fn card(&self) -> Option<&tonari_wire::Card> {
        match self {
            Content::Card { card } => Some(card),
            _ => None,
        }
    }

    pub(crate) fn to_bytes(&self) -> crate::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| crate::SdkError::Invalid(e.to_string()))
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Self> {
        match serde_json::from_slice(bytes) {
            Ok(c) => Some(c),
            // A known type with a shape this version does not understand (a
            // newer card kind, say) is unknown content, not garbage.
            Err(_) => serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(bytes)
                .ok()
                .filter(|m| m.get("type").is_some_and(|t| t.is_string()))
                .map(|_| Content::Unknown),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wire_format() {
        let c = Content::text("hi");
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"type":"text","body":"hi"}"#);
        assert_eq!(Content::from_bytes(json.as_bytes()), Some(c));
    }

    #[test]
    fn unknown_type_and_garbage() {
        assert_eq!(
            Content::from_bytes(br#"{"type":"poll","title":"x"}"#),
            Some(Content::Unknown)
        );
        assert_eq!(
            Content::from_bytes(br#"{"type":"card","card":{"kind":"booking"}}"#),
            Some(Content::Unknown)
        );
        assert_eq!(Content::from_bytes(b"not json"), None);
    }
}
