//! HL7 v2.5 ORU^R01: parsing (structure by the `hl7-parser` crate, our own
//! UTF-8-safe unescaping) into a [`LabCard`], and the ACK answer.
//!
//! ACK codes: `AA` accepted (also for a duplicate control id: the message was
//! already accepted once, nothing is stored twice); `AE` a well-formed ORU^R01
//! whose content we cannot use (no network id, no usable OBX); `AR` rejected:
//! not HL7, not UTF-8, not ORU^R01, no control id, or the source is not
//! authenticated (the API key in MSH-8). Errors never carry values.

use crate::store::bots::{NewItem, kind};
use hl7_parser::Message;
use hl7_parser::message::{Field, Repeat, Segment};
use tonari_wire::{LabCard, LabFlag, LabResult};

/// How a message is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckCode {
    AA,
    AE,
    AR,
}

impl AckCode {
    pub fn as_str(self) -> &'static str {
        match self {
            AckCode::AA => "AA",
            AckCode::AE => "AE",
            AckCode::AR => "AR",
        }
    }
}

/// Why a message was not accepted (text safe for logs and the ACK: no values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: AckCode,
    pub reason: &'static str,
}

fn reject(reason: &'static str) -> Refusal {
    Refusal {
        code: AckCode::AR,
        reason,
    }
}

fn error(reason: &'static str) -> Refusal {
    Refusal {
        code: AckCode::AE,
        reason,
    }
}

/// A parsed ORU^R01, ready to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oru {
    pub control_id: String,
    /// MSH-8 (the source's API key), not echoed anywhere.
    pub security: String,
    pub card: LabCard,
}

/// The fields of MSH needed to answer, read leniently (even from a message
/// that does not parse) and sanitised for echoing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    pub sending_app: String,
    pub sending_facility: String,
    pub control_id: String,
    /// MSH-8, the source's API key: used to authenticate, never echoed or logged.
    pub security: String,
}

/// What may be echoed in an ACK field: printable ASCII without the field
/// separator and the escape character (so it cannot break the ACK).
fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| (c.is_ascii_graphic() || *c == ' ') && !matches!(c, '|' | '\\'))
        .take(199)
        .collect()
}

/// Read MSH-3, MSH-4 and MSH-10 by splitting the first segment; never fails.
pub fn header(text: &str) -> Header {
    let first = text.split(['\r', '\n']).next().unwrap_or("");
    let Some(rest) = first.strip_prefix("MSH") else {
        return Header::default();
    };
    let Some(sep) = rest.chars().next() else {
        return Header::default();
    };
    // MSH-1 is the separator itself: fields[0] = "" , fields[1] = MSH-2, ...
    let fields: Vec<&str> = rest.split(sep).collect();
    let get = |n: usize| fields.get(n - 1).copied().unwrap_or("");
    Header {
        sending_app: sanitize(get(3)),
        sending_facility: sanitize(get(4)),
        control_id: sanitize(get(10)),
        security: get(8).trim().to_string(),
    }
}

/// Undo HL7 escape sequences (`\F\ \S\ \T\ \R\ \E\ \Xhh..\ \.br\`) with the
/// message's separators. Works on characters, so UTF-8 text (Japanese) is
/// safe. Formatting sequences (`\H\`, `\N\`, ...) are dropped.
pub fn unescape(value: &str, seps: &hl7_parser::message::Separators) -> String {
    let esc = seps.escape;
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != esc {
            out.push(c);
            continue;
        }
        let mut seq = String::new();
        let mut closed = false;
        for d in chars.by_ref() {
            if d == esc {
                closed = true;
                break;
            }
            seq.push(d);
        }
        if !closed {
            // A lone escape character: keep the text as is.
            out.push(esc);
            out.push_str(&seq);
            break;
        }
        match seq.as_str() {
            "F" => out.push(seps.field),
            "S" => out.push(seps.component),
            "T" => out.push(seps.subcomponent),
            "R" => out.push(seps.repetition),
            "E" => out.push(esc),
            ".br" => out.push('\n'),
            s if s.starts_with('X') && s.len() % 2 == 1 => {
                let bytes: Option<Vec<u8>> = (1..s.len())
                    .step_by(2)
                    .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                    .collect();
                if let Some(b) = bytes {
                    out.push_str(&String::from_utf8_lossy(&b));
                }
            }
            _ => {}
        }
    }
    out
}

struct Ctx<'a> {
    seps: &'a hl7_parser::message::Separators,
}

impl Ctx<'_> {
    fn field<'m>(&self, seg: &'m Segment<'m>, n: usize) -> Option<&'m Field<'m>> {
        if n == 0 {
            return None;
        }
        seg.field(n)
    }

    /// Component `c` (1-based) of a repeat, unescaped, trimmed; None when empty.
    fn comp(&self, rep: &Repeat<'_>, c: usize) -> Option<String> {
        if c == 0 {
            return None;
        }
        let v = rep.component(c)?.raw_value();
        let v = unescape(v, self.seps).trim().to_string();
        (!v.is_empty()).then_some(v)
    }

    /// Component `c` of the first repeat of field `n`.
    fn get(&self, seg: &Segment<'_>, n: usize, c: usize) -> Option<String> {
        let f = self.field(seg, n)?;
        let rep = f.repeats().next()?;
        self.comp(rep, c)
    }
}

/// Parse an ORU^R01 (UTF-8 text). `authority` names the PID-3 assigning
/// authority whose identifier is the network id. `source` names the
/// authenticated source (used when MSH-4 is empty).
pub fn parse_oru(text: &str, authority: &str, source: &str) -> Result<Oru, Refusal> {
    let msg = Message::parse_with_lenient_newlines(text, true)
        .map_err(|_| reject("the frame is not an HL7 v2 message"))?;
    let seps = msg.separators;
    let cx = Ctx { seps: &seps };
    let msh = msg
        .segments()
        .next()
        .filter(|s| s.name == "MSH")
        .ok_or_else(|| reject("the message does not start with MSH"))?;
    let control_id = cx
        .get(msh, 10, 1)
        .ok_or_else(|| reject("MSH-10 (message control id) is empty"))?;
    let msg_type = cx.get(msh, 9, 1).unwrap_or_default();
    let event = cx.get(msh, 9, 2).unwrap_or_default();
    if msg_type != "ORU" || event != "R01" {
        return Err(reject("only ORU^R01 is accepted"));
    }
    if let Some(v) = cx.get(msh, 12, 1)
        && !v.starts_with("2.")
    {
        return Err(reject("only HL7 version 2.x is accepted"));
    }
    let security = cx.get(msh, 8, 1).unwrap_or_default();
    // MSH-4 is an HD: namespace id ^ universal id (an OID) ^ id type.
    let source_org = cx.get(msh, 4, 1).unwrap_or_else(|| source.to_string());

    let pid = msg.segment("PID").ok_or_else(|| error("no PID segment"))?;
    if msg.segment_count("PID") > 1 {
        // Results of several patients in one message are not split: refuse
        // rather than risk posting one patient's results in another's room.
        return Err(error("one patient (PID) per message"));
    }
    let mut network_id = None;
    if let Some(f) = cx.field(pid, 3) {
        for rep in f.repeats() {
            let auth = rep
                .component(4)
                .and_then(|c| {
                    c.subcomponent(1)
                        .map(|s| s.raw_value())
                        .or(Some(c.raw_value()))
                })
                .map(|v| unescape(v, &seps));
            if auth.as_deref().map(str::trim) == Some(authority)
                && let Some(id) = cx.comp(rep, 1)
            {
                network_id = Some(id);
                break;
            }
        }
    }
    let network_id = network_id
        .ok_or_else(|| error("PID-3 carries no id of the network's assigning authority"))?;
    if !tonari_wire::care::valid_network_id(&network_id) {
        return Err(error("the network id in PID-3 is not valid"));
    }

    let mut report = None;
    let mut specimen_time = None;
    let mut results = Vec::new();
    for seg in msg.segments() {
        match seg.name {
            "OBR" => {
                if report.is_none() {
                    report = cx.get(seg, 4, 2).or_else(|| cx.get(seg, 4, 1));
                }
                if specimen_time.is_none() {
                    specimen_time = cx.get(seg, 7, 1);
                }
            }
            "OBX" => {
                let status = cx.get(seg, 11, 1).unwrap_or_default();
                if matches!(status.as_str(), "D" | "W" | "X") {
                    continue;
                }
                let Some(obs) = cx.field(seg, 3).and_then(|f| f.repeats().next()) else {
                    return Err(error("an OBX has no observation identifier (OBX-3)"));
                };
                let mut loinc = None;
                let mut jlac10 = None;
                for (id_c, sys_c) in [(1, 3), (4, 6)] {
                    let (Some(id), Some(sys)) = (cx.comp(obs, id_c), cx.comp(obs, sys_c)) else {
                        continue;
                    };
                    match sys.to_ascii_uppercase().as_str() {
                        "LN" | "LOINC" => loinc = loinc.or(Some(id)),
                        "JC10" | "JLAC10" => jlac10 = jlac10.or(Some(id)),
                        _ => {}
                    }
                }
                let test_name = cx
                    .comp(obs, 2)
                    .or_else(|| cx.comp(obs, 5))
                    .or_else(|| cx.comp(obs, 1))
                    .ok_or_else(|| error("an OBX has no observation identifier (OBX-3)"))?;
                let value_type = cx.get(seg, 2, 1).unwrap_or_default();
                let values: Vec<String> = cx
                    .field(seg, 5)
                    .map(|f| {
                        f.repeats()
                            .filter_map(|r| {
                                if matches!(value_type.as_str(), "CE" | "CWE" | "CNE") {
                                    cx.comp(r, 2).or_else(|| cx.comp(r, 1))
                                } else {
                                    // ST/TX/NM/SN...: the whole repeat, components joined.
                                    let v = unescape(r.raw_value(), &seps);
                                    let v = v.replace(seps.component, " ").trim().to_string();
                                    (!v.is_empty()).then_some(v)
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                if values.is_empty() {
                    return Err(error("an OBX has no value (OBX-5)"));
                }
                let flag = cx
                    .field(seg, 8)
                    .and_then(|f| f.repeats().find_map(|r| cx.comp(r, 1)))
                    .and_then(|c| LabFlag::from_code(&c));
                results.push(LabResult {
                    test_name,
                    loinc,
                    jlac10,
                    value: values.join(", "),
                    unit: cx.get(seg, 6, 1).or_else(|| cx.get(seg, 6, 2)),
                    reference_range: cx.get(seg, 7, 1),
                    flag,
                    specimen_time: cx.get(seg, 14, 1),
                });
            }
            _ => {}
        }
    }
    if results.is_empty() {
        return Err(error("the message has no OBX result"));
    }
    Ok(Oru {
        control_id,
        security,
        card: LabCard {
            patient_network_id: network_id,
            source_org,
            report,
            specimen_time,
            results,
        },
    })
}

impl Oru {
    /// The item to store, keyed by source and control id.
    pub fn item(&self, source: &str) -> Result<NewItem, serde_json::Error> {
        Ok(NewItem {
            idem_key: format!("hl7:{source}:{}", self.control_id),
            kind: kind::LAB,
            patient_network_id: self.card.patient_network_id.clone(),
            payload: serde_json::to_string(&self.card)?,
        })
    }
}

/// The ACK for a message (its header read leniently), `\r`-separated.
pub fn ack(h: &Header, code: AckCode, text: &str, now_ms: i64) -> String {
    let ts: String = crate::mailer::format_utc(now_ms)
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let ack_id = format!("ACK{now_ms}");
    format!(
        "MSH|^~\\&|TONARI|TONARI|{}|{}|{ts}||ACK^R01^ACK|{ack_id}|P|2.5|||||||UNICODE UTF-8\rMSA|{}|{}|{}\r",
        h.sending_app,
        h.sending_facility,
        code.as_str(),
        h.control_id,
        sanitize(text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescape_is_utf8_safe() {
        let seps = hl7_parser::message::Separators::default();
        assert_eq!(
            unescape(r"血糖\T\値 \F\ a\S\b\E\", &seps),
            "血糖&値 | a^b\\"
        );
        assert_eq!(unescape(r"x\XE8A180\y", &seps), "x血y");
        assert_eq!(unescape(r"日本\", &seps), "日本\\");
        assert_eq!(unescape(r"a\H\b\N\c\.br\d", &seps), "abc\nd");
    }

    /// Random input never panics: it is parsed or refused.
    #[test]
    fn random_input_never_panics() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let alphabet: Vec<char> = "MSHPIDOBXRU|^~\\&\r\n01AEFSTX.br 血糖値-".chars().collect();
        let base = "MSH|^~\\&|L|F|T|N|2026|k|ORU^R01|C1|P|2.5\rPID|1||P-1^^^TONARI\rOBX|1|NM|1-1^G^LN||5|u|1-2|H\r";
        for i in 0..3000 {
            let len = (next() % 200) as usize;
            let noise: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let input = match i % 3 {
                0 => format!("MSH{noise}"),
                1 => format!("{}{noise}", &base[..(next() as usize % base.len())]),
                _ => base.replace('^', &noise.chars().take(3).collect::<String>()),
            };
            let _ = header(&input);
            let _ = parse_oru(&input, "TONARI", "src");
        }
        assert!(parse_oru(base, "TONARI", "src").is_ok());
    }

    #[test]
    fn two_patients_in_one_message_are_refused() {
        let m = "MSH|^~\\&|L|F|T|N|2026|k|ORU^R01|C1|P|2.5\rPID|1||P-1^^^TONARI\rOBX|1|NM|1-1^G^LN||5\rPID|2||P-2^^^TONARI\rOBX|1|NM|1-1^G^LN||6\r";
        let e = parse_oru(m, "TONARI", "src").unwrap_err();
        assert_eq!(e.code, AckCode::AE);
        let one = m.split("PID|2").next().unwrap();
        let oru = parse_oru(one, "TONARI", "src").unwrap();
        assert_eq!(oru.card.patient_network_id, "P-1");
        assert_eq!(oru.control_id, "C1");
    }

    #[test]
    fn lenient_header() {
        let h = header("MSH|^~\\&|LAB|Minami^1.2|TONARI|NET|2026||ORU^R01|ctl-1\r|x");
        assert_eq!(h.control_id, "ctl-1");
        assert_eq!(h.sending_app, "LAB");
        assert_eq!(header("garbage"), Header::default());
        assert_eq!(header("MSH").control_id, "");
    }
}
