//! Cards: structured application messages posted by bots (lab results, EHR
//! summary). A card travels inside an MLS application message as the
//! content `{"type":"card","card":{"kind":"lab_results",...}}`; it is end-to-end
//! encrypted like any text. Values are kept as the source system sent them
//! (strings), so nothing is lost to floating point.
//!
//! [`Card::render_text`] gives the plain-text rendering used by the CLI; richer
//! clients render the fields themselves.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Interpretation flag of one result (HL7 OBX-8 / FHIR Observation.interpretation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabFlag {
    Normal,
    High,
    Low,
    CriticalHigh,
    CriticalLow,
    /// Critical without a direction (e.g. HL7 `AA`).
    Critical,
    /// Abnormal without a direction (e.g. HL7 `A`).
    Abnormal,
}

impl LabFlag {
    /// From an HL7 v2 abnormal flag (table 0078) or a FHIR
    /// v3-ObservationInterpretation code.
    pub fn from_code(code: &str) -> Option<LabFlag> {
        Some(match code.trim() {
            "N" => LabFlag::Normal,
            "H" | "HU" | ">" => LabFlag::High,
            "L" | "LU" | "<" => LabFlag::Low,
            "HH" => LabFlag::CriticalHigh,
            "LL" => LabFlag::CriticalLow,
            "AA" => LabFlag::Critical,
            "A" => LabFlag::Abnormal,
            _ => return None,
        })
    }

    /// The short mark shown next to a value (`H`, `L`, `HH!`, ...).
    pub fn mark(self) -> &'static str {
        match self {
            LabFlag::Normal => "",
            LabFlag::High => "H",
            LabFlag::Low => "L",
            LabFlag::CriticalHigh => "HH!",
            LabFlag::CriticalLow => "LL!",
            LabFlag::Critical => "CRITICAL!",
            LabFlag::Abnormal => "A",
        }
    }

    pub fn is_critical(self) -> bool {
        matches!(
            self,
            LabFlag::CriticalHigh | LabFlag::CriticalLow | LabFlag::Critical
        )
    }
}

/// One lab result (one OBX / one Observation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabResult {
    /// The test's display name as the source sent it (may be Japanese).
    pub test_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loinc: Option<String>,
    /// JLAC10 code (Japanese lab code, 17 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jlac10: Option<String>,
    /// The value as sent (number or text).
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_range: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flag: Option<LabFlag>,
    /// When the specimen was taken (ISO 8601 or HL7 TS as sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specimen_time: Option<String>,
}

/// A set of results that arrived together (one ORU^R01 message, one
/// DiagnosticReport, one Observation or the Observations of one Bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabCard {
    /// The patient's network id (the room's patient).
    pub patient_network_id: String,
    /// The sending organisation / lab (HL7 MSH-4, FHIR performer or the source name).
    pub source_org: String,
    /// The report or order this set belongs to, when the source named one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<String>,
    /// When the specimen was taken (for the whole set; results may carry their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub specimen_time: Option<String>,
    pub results: Vec<LabResult>,
}

/// An EHR summary of the room's patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SummaryCard {
    pub patient_network_id: String,
    pub problems: Vec<String>,
    pub medications: Vec<String>,
    pub allergies: Vec<String>,
    /// The latest result of each test, newest first (at most a few).
    pub recent_labs: Vec<LabResult>,
    /// The room's members as `name (role)`.
    pub care_team: Vec<String>,
}

/// A card. Unknown kinds make the whole content decode as unknown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Card {
    LabResults(LabCard),
    Summary(SummaryCard),
}

/// A user's e-mail notice preferences (`GET`/`POST` [`crate::paths::NOTICES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NoticePrefs {
    /// E-mail me when new results arrive in my rooms: `true`, `false`, or
    /// `null` for the role's default (care managers yes, others no).
    pub results: Option<bool>,
    /// What applies now (read only; ignored in requests).
    #[serde(default)]
    pub effective: bool,
}

fn result_line(out: &mut String, r: &LabResult) {
    let _ = write!(out, "  {}", r.test_name);
    let codes: Vec<String> = [
        r.loinc.as_ref().map(|c| format!("LOINC {c}")),
        r.jlac10.as_ref().map(|c| format!("JLAC10 {c}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !codes.is_empty() {
        let _ = write!(out, " [{}]", codes.join(", "));
    }
    let _ = write!(out, ": {}", r.value);
    if let Some(u) = &r.unit {
        let _ = write!(out, " {u}");
    }
    if let Some(f) = r.flag.filter(|f| *f != LabFlag::Normal) {
        let _ = write!(out, " {}", f.mark());
    }
    if let Some(range) = &r.reference_range {
        let _ = write!(out, " (ref {range})");
    }
    if let Some(t) = &r.specimen_time {
        let _ = write!(out, " @ {t}");
    }
    out.push('\n');
}

impl Card {
    /// A readable plain-text rendering (several lines).
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        match self {
            Card::LabResults(c) => {
                let critical = c
                    .results
                    .iter()
                    .any(|r| r.flag.is_some_and(LabFlag::is_critical));
                let _ = writeln!(
                    out,
                    "[lab results{}] patient {} from {}{}",
                    if critical { " CRITICAL" } else { "" },
                    c.patient_network_id,
                    c.source_org,
                    c.specimen_time
                        .as_ref()
                        .map(|t| format!(", specimen {t}"))
                        .unwrap_or_default()
                );
                for r in &c.results {
                    result_line(&mut out, r);
                }
            }
            Card::Summary(c) => {
                let _ = writeln!(out, "[summary] patient {}", c.patient_network_id);
                let list = |out: &mut String, title: &str, items: &[String]| {
                    let _ = writeln!(
                        out,
                        "  {title}: {}",
                        if items.is_empty() {
                            "none recorded".to_string()
                        } else {
                            items.join("; ")
                        }
                    );
                };
                list(&mut out, "problems", &c.problems);
                list(&mut out, "medications", &c.medications);
                list(&mut out, "allergies", &c.allergies);
                if c.recent_labs.is_empty() {
                    out.push_str("  recent labs: none recorded\n");
                } else {
                    out.push_str("  recent labs:\n");
                    for r in &c.recent_labs {
                        out.push_str("  ");
                        result_line(&mut out, r);
                    }
                }
                list(&mut out, "care team", &c.care_team);
            }
        }
        while out.ends_with('\n') {
            out.pop();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_card_json_and_text() {
        let card = Card::LabResults(LabCard {
            patient_network_id: "P-1".into(),
            source_org: "Minami Lab".into(),
            report: None,
            specimen_time: Some("2026-11-20T08:30:00+09:00".into()),
            results: vec![LabResult {
                test_name: "HbA1c".into(),
                loinc: Some("4548-4".into()),
                jlac10: None,
                value: "7.9".into(),
                unit: Some("%".into()),
                reference_range: Some("4.6-6.2".into()),
                flag: Some(LabFlag::High),
                specimen_time: None,
            }],
        });
        let json = serde_json::to_value(&card).unwrap();
        assert_eq!(json["kind"], "lab_results");
        assert_eq!(json["results"][0]["flag"], "high");
        let back: Card = serde_json::from_value(json).unwrap();
        assert_eq!(back, card);
        let text = card.render_text();
        assert!(
            text.contains("HbA1c [LOINC 4548-4]: 7.9 % H (ref 4.6-6.2)"),
            "{text}"
        );
        assert_eq!(LabFlag::from_code("HH"), Some(LabFlag::CriticalHigh));
    }
}
