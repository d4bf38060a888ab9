//! FHIR R4 JSON: structural validation and mapping to stored items.
//!
//! Accepted: Bundle (`transaction`, `batch` or `collection`), Patient,
//! Observation, DiagnosticReport, Condition, MedicationRequest,
//! MedicationStatement, AllergyIntolerance. Anything else is refused with an
//! OperationOutcome (422). Observations become lab result sets: one per
//! DiagnosticReport (its `result` references, or contained Observations), one
//! per patient for the other Observations of a Bundle, one per Observation
//! posted alone. The patient is found by the identifier whose `system` is the
//! configured network-id system, on the subject itself or on the Patient it
//! references (in the same Bundle).

use crate::store::bots::{NewItem, kind};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet};
use tonari_wire::{LabCard, LabFlag, LabResult};

/// The types this endpoint accepts.
pub const SUPPORTED: &[&str] = &[
    "Bundle",
    "Patient",
    "Observation",
    "DiagnosticReport",
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "AllergyIntolerance",
];

/// Most entries in one Bundle.
pub const MAX_ENTRIES: usize = 1000;

/// A refusal, answered as an OperationOutcome. Texts name fields and
/// resource types, never values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// FHIR issue type: `structure`, `not-supported`, `required`, `value`.
    pub code: &'static str,
    pub diagnostics: String,
}

fn invalid(code: &'static str, diagnostics: impl Into<String>) -> Invalid {
    Invalid {
        code,
        diagnostics: diagnostics.into(),
    }
}

/// An OperationOutcome with one issue.
pub fn outcome(severity: &str, code: &str, diagnostics: &str) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}]
    })
}

fn s<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|x| !x.is_empty())
}

/// The text of a CodeableConcept: `text`, else the first coding's display, else its code.
fn concept_text(cc: &Value) -> Option<String> {
    s(cc, "text").map(String::from).or_else(|| {
        cc.get("coding")?
            .as_array()?
            .iter()
            .find_map(|c| s(c, "display").or_else(|| s(c, "code")).map(String::from))
    })
}

fn codings(cc: &Value) -> impl Iterator<Item = (&str, &str)> {
    cc.get("coding")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((s(c, "system")?, s(c, "code")?)))
}

fn is_jlac10(system: &str) -> bool {
    let l = system.to_ascii_lowercase();
    l.contains("jlac10") || l == "urn:oid:1.2.392.200119.4.504"
}

fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn quantity_text(q: &Value) -> Option<String> {
    let v = number_text(q.get("value")?)?;
    Ok::<_, ()>(match s(q, "comparator") {
        Some(c) => format!("{c}{v}"),
        None => v,
    })
    .ok()
}

/// An Observation as a lab result (it must have a code and a value).
fn lab_result(obs: &Value) -> Result<LabResult, Invalid> {
    let code = obs
        .get("code")
        .filter(|c| c.is_object())
        .ok_or_else(|| invalid("required", "Observation.code is required"))?;
    if s(obs, "status").is_none() {
        return Err(invalid("required", "Observation.status is required"));
    }
    let mut loinc = None;
    let mut jlac10 = None;
    for (system, c) in codings(code) {
        if system == "http://loinc.org" {
            loinc = loinc.or(Some(c.to_string()));
        } else if is_jlac10(system) {
            jlac10 = jlac10.or(Some(c.to_string()));
        }
    }
    let test_name = concept_text(code)
        .ok_or_else(|| invalid("required", "Observation.code has no text or coding"))?;
    let (value, unit) = if let Some(q) = obs.get("valueQuantity") {
        let v = quantity_text(q)
            .ok_or_else(|| invalid("value", "Observation.valueQuantity.value is not a number"))?;
        (v, s(q, "unit").or_else(|| s(q, "code")).map(String::from))
    } else if let Some(v) = s(obs, "valueString") {
        (v.to_string(), None)
    } else if let Some(cc) = obs.get("valueCodeableConcept") {
        (
            concept_text(cc).ok_or_else(|| {
                invalid(
                    "value",
                    "Observation.valueCodeableConcept has no text or coding",
                )
            })?,
            None,
        )
    } else if let Some(v) = obs.get("valueInteger").and_then(number_text) {
        (v, None)
    } else if let Some(b) = obs.get("valueBoolean").and_then(Value::as_bool) {
        (b.to_string(), None)
    } else if let Some(cc) = obs.get("dataAbsentReason") {
        (
            format!("(no value: {})", concept_text(cc).unwrap_or_default()),
            None,
        )
    } else {
        return Err(invalid(
            "required",
            "Observation has no value[x] (Quantity, String, CodeableConcept, Integer, Boolean) and no dataAbsentReason",
        ));
    };
    let reference_range = obs
        .get("referenceRange")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|r| {
            s(r, "text").map(String::from).or_else(|| {
                let low = r
                    .get("low")
                    .and_then(|q| q.get("value"))
                    .and_then(number_text);
                let high = r
                    .get("high")
                    .and_then(|q| q.get("value"))
                    .and_then(number_text);
                match (low, high) {
                    (Some(l), Some(h)) => Some(format!("{l}-{h}")),
                    (Some(l), None) => Some(format!(">={l}")),
                    (None, Some(h)) => Some(format!("<={h}")),
                    (None, None) => None,
                }
            })
        });
    let flag = obs
        .get("interpretation")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|cc| cc.get("coding").and_then(Value::as_array))
        .flatten()
        .find_map(|c| s(c, "code").and_then(LabFlag::from_code));
    let specimen_time = s(obs, "effectiveDateTime")
        .or_else(|| obs.get("effectivePeriod").and_then(|p| s(p, "start")))
        .or_else(|| s(obs, "issued"))
        .map(String::from);
    Ok(LabResult {
        test_name,
        loinc,
        jlac10,
        value,
        unit,
        reference_range,
        flag,
        specimen_time,
    })
}

/// What a payload holds, after validation.
struct Parsed<'a> {
    /// (full url or "", resource)
    resources: Vec<(Option<&'a str>, &'a Value)>,
}

fn resource_type(r: &Value) -> Result<&str, Invalid> {
    let t = r
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("structure", "resourceType is missing"))?;
    if !SUPPORTED.contains(&t) {
        return Err(invalid(
            "not-supported",
            format!(
                "resource type {} is not accepted here (accepted: {})",
                if t.len() <= 64 && t.chars().all(|c| c.is_ascii_alphanumeric()) {
                    t
                } else {
                    "(invalid)"
                },
                SUPPORTED.join(", ")
            ),
        ));
    }
    Ok(t)
}

fn flatten(root: &Value) -> Result<Parsed<'_>, Invalid> {
    if !root.is_object() {
        return Err(invalid(
            "structure",
            "the body must be a FHIR resource (a JSON object)",
        ));
    }
    let t = resource_type(root)?;
    let mut resources = Vec::new();
    if t == "Bundle" {
        match s(root, "type") {
            Some("transaction" | "batch" | "collection") => {}
            _ => {
                return Err(invalid(
                    "not-supported",
                    "Bundle.type must be transaction, batch or collection",
                ));
            }
        }
        let entries: &[Value] = match root.get("entry") {
            None => &[],
            Some(Value::Array(a)) => a,
            Some(_) => return Err(invalid("structure", "Bundle.entry must be an array")),
        };
        if entries.len() > MAX_ENTRIES {
            return Err(invalid(
                "too-costly",
                format!("a Bundle may have at most {MAX_ENTRIES} entries"),
            ));
        }
        for (i, e) in entries.iter().enumerate() {
            let r = e.get("resource").filter(|r| r.is_object()).ok_or_else(|| {
                invalid(
                    "structure",
                    format!("Bundle.entry[{i}].resource is missing"),
                )
            })?;
            let rt = resource_type(r).map_err(|mut e| {
                e.diagnostics = format!("Bundle.entry[{i}]: {}", e.diagnostics);
                e
            })?;
            if rt == "Bundle" {
                return Err(invalid(
                    "not-supported",
                    format!("Bundle.entry[{i}]: nested Bundles are not accepted"),
                ));
            }
            resources.push((s(e, "fullUrl"), r));
        }
    } else {
        resources.push((None, root));
    }
    Ok(Parsed { resources })
}

/// Version-aware key of one resource: `Type/id/_history/version`, or a hash of
/// its content when it has no id.
fn resource_key(r: &Value) -> String {
    let t = s(r, "resourceType").unwrap_or("?");
    match s(r, "id") {
        Some(id) => {
            let v = r.get("meta").and_then(|m| s(m, "versionId")).unwrap_or("-");
            format!("{t}/{id}/_history/{v}")
        }
        None => {
            let h = Sha256::digest(r.to_string().as_bytes());
            format!("{t}/#{}", hex::encode(&h[..16]))
        }
    }
}

struct Resolver<'a> {
    system: &'a str,
    /// "Patient/id" and full urls → network id.
    patients: HashMap<String, String>,
}

impl Resolver<'_> {
    fn network_id_in(&self, ids: Option<&Value>) -> Option<String> {
        let list: Vec<&Value> = match ids? {
            Value::Array(a) => a.iter().collect(),
            v @ Value::Object(_) => vec![v],
            _ => return None,
        };
        list.into_iter()
            .find(|i| s(i, "system") == Some(self.system))
            .and_then(|i| s(i, "value"))
            .map(String::from)
    }

    /// The network id of the patient a resource is about.
    fn patient_of(&self, r: &Value, what: &str) -> Result<String, Invalid> {
        let field = if what == "AllergyIntolerance" {
            "patient"
        } else {
            "subject"
        };
        let subj = r
            .get(field)
            .or_else(|| r.get("patient"))
            .ok_or_else(|| invalid("required", format!("{what}.{field} is required")))?;
        let nid = self
            .network_id_in(subj.get("identifier"))
            .or_else(|| s(subj, "reference").and_then(|rf| self.patients.get(rf).cloned()))
            .ok_or_else(|| {
                invalid(
                    "required",
                    format!(
                        "{what}.{field} names no patient with an identifier of system {} (give it in {field}.identifier, or send the Patient in the same Bundle)",
                        self.system
                    ),
                )
            })?;
        if !tonari_wire::care::valid_network_id(&nid) {
            return Err(invalid(
                "value",
                format!("{what}.{field}: the network id is not valid"),
            ));
        }
        Ok(nid)
    }
}

fn performer(r: &Value) -> Option<String> {
    r.get("performer")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find_map(|p| s(p, "display")))
        .map(String::from)
}

/// Validate `root` and map it to items to store. `source` is the
/// authenticated source's name (the key prefix and the default lab name).
pub fn items(root: &Value, system: &str, source: &str) -> Result<Vec<NewItem>, Invalid> {
    let parsed = flatten(root)?;
    let mut resolver = Resolver {
        system,
        patients: HashMap::new(),
    };
    for (full_url, r) in &parsed.resources {
        if s(r, "resourceType") == Some("Patient") {
            let Some(nid) = resolver.network_id_in(r.get("identifier")) else {
                continue;
            };
            if let Some(id) = s(r, "id") {
                resolver
                    .patients
                    .insert(format!("Patient/{id}"), nid.clone());
            }
            if let Some(u) = full_url {
                resolver.patients.insert(u.to_string(), nid.clone());
            }
        }
    }
    // Observations by reference, to attach them to DiagnosticReports.
    let mut obs_by_ref: HashMap<String, &Value> = HashMap::new();
    for (full_url, r) in &parsed.resources {
        if s(r, "resourceType") == Some("Observation") {
            if let Some(id) = s(r, "id") {
                obs_by_ref.insert(format!("Observation/{id}"), r);
            }
            if let Some(u) = full_url {
                obs_by_ref.insert(u.to_string(), r);
            }
        }
    }
    let mut used: HashSet<*const Value> = HashSet::new();
    let mut out = Vec::new();
    let key = |k: String| format!("fhir:{source}:{k}");
    for (_, r) in &parsed.resources {
        let t = s(r, "resourceType").unwrap_or_default();
        match t {
            "DiagnosticReport" => {
                if s(r, "status").is_none() || r.get("code").is_none() {
                    return Err(invalid(
                        "required",
                        "DiagnosticReport.status and .code are required",
                    ));
                }
                let nid = resolver.patient_of(r, t)?;
                let contained: HashMap<String, &Value> = r
                    .get("contained")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|c| Some((format!("#{}", s(c, "id")?), c)))
                    .collect();
                let mut results = Vec::new();
                for rf in r
                    .get("result")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let Some(reference) = s(rf, "reference") else {
                        return Err(invalid(
                            "structure",
                            "DiagnosticReport.result needs a reference",
                        ));
                    };
                    let obs = contained
                        .get(reference)
                        .or_else(|| obs_by_ref.get(reference))
                        .ok_or_else(|| {
                            invalid(
                                "structure",
                                "DiagnosticReport.result references an Observation that is neither contained nor in the Bundle",
                            )
                        })?;
                    used.insert(*obs as *const Value);
                    results.push(lab_result(obs)?);
                }
                if results.is_empty() {
                    return Err(invalid("required", "DiagnosticReport has no result"));
                }
                let card = LabCard {
                    patient_network_id: nid.clone(),
                    source_org: performer(r).unwrap_or_else(|| source.to_string()),
                    report: r.get("code").and_then(concept_text),
                    specimen_time: s(r, "effectiveDateTime").map(String::from),
                    results,
                };
                out.push(lab_item(key(resource_key(r)), card)?);
            }
            "Condition" | "MedicationRequest" | "MedicationStatement" | "AllergyIntolerance" => {
                let nid = resolver.patient_of(r, t)?;
                let (k, text) = match t {
                    "Condition" => (
                        kind::PROBLEM,
                        r.get("code")
                            .and_then(concept_text)
                            .ok_or_else(|| invalid("required", "Condition.code is required"))?,
                    ),
                    "AllergyIntolerance" => {
                        let mut text = r.get("code").and_then(concept_text).ok_or_else(|| {
                            invalid("required", "AllergyIntolerance.code is required")
                        })?;
                        if let Some(c) = s(r, "criticality") {
                            text.push_str(&format!(" (criticality {c})"));
                        }
                        (kind::ALLERGY, text)
                    }
                    _ => {
                        let mut text = r
                            .get("medicationCodeableConcept")
                            .and_then(concept_text)
                            .ok_or_else(|| {
                                invalid(
                                    "required",
                                    format!("{t}.medicationCodeableConcept is required (medicationReference is not supported)"),
                                )
                            })?;
                        let dosage = r
                            .get(if t == "MedicationRequest" {
                                "dosageInstruction"
                            } else {
                                "dosage"
                            })
                            .and_then(Value::as_array)
                            .and_then(|a| a.first())
                            .and_then(|d| s(d, "text"));
                        if let Some(d) = dosage {
                            text.push_str(&format!(", {d}"));
                        }
                        (kind::MEDICATION, text)
                    }
                };
                out.push(NewItem {
                    idem_key: key(resource_key(r)),
                    kind: k,
                    patient_network_id: nid,
                    payload: Value::String(text).to_string(),
                });
            }
            _ => {}
        }
    }
    // Observations not attached to a report: one set per patient.
    let mut loose: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for (_, r) in &parsed.resources {
        if s(r, "resourceType") == Some("Observation") && !used.contains(&(*r as *const Value)) {
            let nid = resolver.patient_of(r, "Observation")?;
            loose.entry(nid).or_default().push(r);
        }
    }
    for (nid, list) in loose {
        let mut results = Vec::new();
        let mut keys = Vec::new();
        for o in &list {
            results.push(lab_result(o)?);
            keys.push(resource_key(o));
        }
        let k = if keys.len() == 1 {
            keys.remove(0)
        } else {
            keys.sort();
            let h = Sha256::digest(keys.join("\n").as_bytes());
            format!("Observation-set/{}", hex::encode(&h[..16]))
        };
        let source_org = list
            .iter()
            .find_map(|o| performer(o))
            .unwrap_or_else(|| source.to_string());
        let card = LabCard {
            patient_network_id: nid,
            source_org,
            report: None,
            specimen_time: None,
            results,
        };
        out.push(lab_item(key(k), card)?);
    }
    Ok(out)
}

fn lab_item(idem_key: String, card: LabCard) -> Result<NewItem, Invalid> {
    Ok(NewItem {
        idem_key,
        kind: kind::LAB,
        patient_network_id: card.patient_network_id.clone(),
        payload: serde_json::to_string(&card)
            .map_err(|_| invalid("exception", "the result could not be encoded"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SYS: &str = "urn:tonari:network-id";

    #[test]
    fn unknown_type_and_bad_structure() {
        let e = items(&json!({"resourceType": "Encounter"}), SYS, "lab").unwrap_err();
        assert_eq!(e.code, "not-supported");
        assert!(items(&json!([1, 2]), SYS, "lab").is_err());
        assert!(
            items(
                &json!({"resourceType": "Bundle", "type": "searchset"}),
                SYS,
                "lab"
            )
            .is_err()
        );
        let e = items(
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "1"}),
            SYS,
            "lab",
        )
        .unwrap_err();
        assert_eq!(e.code, "required");
    }

    /// Random JSON never panics: it is mapped or refused.
    #[test]
    fn random_json_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys = [
            "resourceType",
            "type",
            "entry",
            "resource",
            "subject",
            "code",
            "coding",
            "system",
            "valueQuantity",
            "value",
            "identifier",
            "reference",
            "result",
            "contained",
            "id",
            "status",
            "referenceRange",
            "low",
            "high",
            "interpretation",
            "patient",
            "fullUrl",
        ];
        let strings = [
            "Bundle",
            "Observation",
            "Patient",
            "DiagnosticReport",
            "transaction",
            SYS,
            "P-1",
            "Patient/p",
            "#o",
            "final",
            "http://loinc.org",
            "",
        ];
        fn random_value(
            next: &mut dyn FnMut() -> u64,
            depth: u32,
            keys: &[&str],
            strings: &[&str],
        ) -> Value {
            match next() % if depth > 4 { 4 } else { 7 } {
                0 => Value::Null,
                1 => json!(next() % 100),
                2 | 3 => json!(strings[(next() % strings.len() as u64) as usize]),
                4 | 5 => {
                    let mut m = serde_json::Map::new();
                    for _ in 0..next() % 5 {
                        let k = keys[(next() % keys.len() as u64) as usize];
                        m.insert(k.into(), random_value(next, depth + 1, keys, strings));
                    }
                    Value::Object(m)
                }
                _ => Value::Array(
                    (0..next() % 4)
                        .map(|_| random_value(next, depth + 1, keys, strings))
                        .collect(),
                ),
            }
        }
        for _ in 0..5000 {
            let v = random_value(&mut next, 0, &keys, &strings);
            let _ = items(&v, SYS, "lab");
        }
    }

    #[test]
    fn diagnostic_reports_and_medication_requests() {
        let subject = json!({"identifier": {"system": SYS, "value": "P-9"}});
        let obs = |id: &str, v: f64| {
            json!({"resourceType": "Observation", "id": id, "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
                   "subject": subject, "valueQuantity": {"value": v, "unit": "g/dL"}})
        };
        // Contained Observations.
        let mut contained = obs("c1", 10.1);
        contained.as_object_mut().unwrap().remove("subject");
        contained["subject"] = subject.clone();
        let dr = json!({"resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
            "code": {"text": "CBC"}, "subject": subject, "performer": [{"display": "Minami Lab"}],
            "contained": [contained], "result": [{"reference": "#c1"}]});
        let it = items(&dr, SYS, "lab").unwrap();
        assert_eq!(it.len(), 1);
        let card: LabCard = serde_json::from_str(&it[0].payload).unwrap();
        assert_eq!(
            (card.report.as_deref(), card.source_org.as_str()),
            (Some("CBC"), "Minami Lab")
        );
        assert_eq!(card.results[0].value, "10.1");
        // A Bundle: the report takes its referenced Observation; the other is loose.
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "DiagnosticReport", "id": "dr2", "status": "final",
                "code": {"text": "CBC"}, "subject": subject, "result": [{"reference": "Observation/o1"}]}},
            {"resource": obs("o1", 12.0)},
            {"resource": obs("o2", 13.5)},
            {"resource": {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
                "intent": "order", "subject": subject,
                "medicationCodeableConcept": {"coding": [{"display": "Amlodipine 5 mg"}]},
                "dosageInstruction": [{"text": "once daily"}]}}
        ]});
        let it = items(&bundle, SYS, "lab").unwrap();
        let kinds: Vec<&str> = it.iter().map(|i| i.kind).collect();
        assert_eq!(kinds, ["lab", "medication", "lab"]);
        assert_eq!(it[1].payload, "\"Amlodipine 5 mg, once daily\"");
        let loose: LabCard = serde_json::from_str(&it[2].payload).unwrap();
        assert_eq!(loose.results.len(), 1);
        assert_eq!(loose.results[0].value, "13.5");
        // A dangling reference is refused.
        let bad = json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
            "subject": subject, "result": [{"reference": "Observation/nope"}]});
        assert_eq!(items(&bad, SYS, "lab").unwrap_err().code, "structure");
    }

    #[test]
    fn observation_with_identifier() {
        let obs = json!({
            "resourceType": "Observation", "id": "glu", "meta": {"versionId": "2"},
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
            "subject": {"identifier": {"system": SYS, "value": "P-1"}},
            "valueQuantity": {"value": 6.3, "unit": "mmol/L"},
            "interpretation": [{"coding": [{"code": "H"}]}],
            "referenceRange": [{"low": {"value": 3.1}, "high": {"value": 6.2}}]
        });
        let it = items(&obs, SYS, "lab").unwrap();
        assert_eq!(it.len(), 1);
        assert_eq!(it[0].idem_key, "fhir:lab:Observation/glu/_history/2");
        let card: LabCard = serde_json::from_str(&it[0].payload).unwrap();
        assert_eq!(card.results[0].value, "6.3");
        assert_eq!(card.results[0].reference_range.as_deref(), Some("3.1-6.2"));
        assert_eq!(card.results[0].flag, Some(LabFlag::High));
    }
}
