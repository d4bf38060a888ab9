//! The summary bot's card: problems, medications, allergies, recent labs
//! (the latest result of each test) and the care team of the room.

use crate::store::bots::{BotStore, kind};
use std::collections::HashSet;
use tonari_sdk::{Client, Content};
use tonari_wire::{Card, LabCard, LabResult, SummaryCard};

const MAX_FACTS: u32 = 30;
const MAX_RECENT_LABS: usize = 8;

async fn facts(bots: &BotStore, nid: &str, k: &str) -> Vec<String> {
    let rows = bots
        .items_of_patient(nid, k, MAX_FACTS)
        .await
        .unwrap_or_default();
    let mut seen = HashSet::new();
    rows.into_iter()
        .filter_map(|r| serde_json::from_str::<String>(&r.payload).ok())
        .filter(|t| seen.insert(t.clone()))
        .collect()
}

/// Build the summary of patient `nid` for a room with these members.
pub async fn build(bots: &BotStore, nid: &str, care_team: Vec<String>) -> SummaryCard {
    let mut recent: Vec<LabResult> = Vec::new();
    let mut tests = HashSet::new();
    for row in bots
        .items_of_patient(nid, kind::LAB, 20)
        .await
        .unwrap_or_default()
    {
        let Ok(card) = serde_json::from_str::<LabCard>(&row.payload) else {
            continue;
        };
        for mut r in card.results {
            if recent.len() >= MAX_RECENT_LABS {
                break;
            }
            if tests.insert(r.test_name.clone()) {
                if r.specimen_time.is_none() {
                    r.specimen_time = card.specimen_time.clone();
                }
                recent.push(r);
            }
        }
    }
    SummaryCard {
        patient_network_id: nid.to_string(),
        problems: facts(bots, nid, kind::PROBLEM).await,
        medications: facts(bots, nid, kind::MEDICATION).await,
        allergies: facts(bots, nid, kind::ALLERGY).await,
        recent_labs: recent,
        care_team,
    }
}

/// Post the summary card of the room's patient (or say the room has none).
pub async fn post(client: &Client, bots: &BotStore, room_id: &str) {
    let settings = match client.room_settings(room_id) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(room = %room_id, error = %e, "room settings unreadable");
            return;
        }
    };
    let content = match settings.patient_network_id {
        Some(nid) => {
            let mut seen = HashSet::new();
            let team = client
                .room(room_id)
                .await
                .map(|r| {
                    r.members
                        .iter()
                        .filter(|m| seen.insert(m.user_id))
                        .map(|m| match m.role {
                            Some(role) => format!("{} ({role})", m.username),
                            None => m.username.clone(),
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            Content::Card {
                card: Card::Summary(build(bots, &nid, team).await),
            }
        }
        None => Content::text("This room has no patient, so there is no summary to show."),
    };
    match client.send_content(room_id, &content).await {
        Ok(ack) => tracing::info!(room = %room_id, seq = ack.seq, "summary card posted"),
        Err(e) => tracing::warn!(room = %room_id, error = %e, "summary card not posted"),
    }
}
