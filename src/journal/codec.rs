//! A [`Message`] as a journal [`Record`] and back: the topic, payload, QoS and
//! RETAIN in their own columns; everything else (MQTT 5 properties, the
//! subscription identifiers it matched, the filters it was a retained replay
//! of) as one JSON document, absent for a plain message.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Record;
use crate::message::{Message, QoS};

/// What a record carries besides the columns.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extra {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub utf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_data: Option<Vec<u8>>,
    /// The expiry interval as delivered, in seconds (counted down from the
    /// record's arrival time when it is replayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry_interval: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscription_ids: Vec<usize>,
    /// Filters of the session this retained message is a replay of (the
    /// filter was subscribed before), for `retained: skip-on-resubscribe`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replayed: Vec<String>,
}

impl Extra {
    fn is_empty(&self) -> bool {
        *self == Extra::default()
    }
}

/// The record of `msg`, received on `session` at `at_ms`.
pub fn record(
    session: &str,
    at_ms: u64,
    msg: &Message,
    extra_ids: Vec<usize>,
    replayed: Vec<String>,
) -> Record {
    let extra = Extra {
        user_properties: msg.user_properties.clone(),
        content_type: msg.content_type.clone(),
        utf8: msg.utf8,
        response_topic: msg.response_topic.clone(),
        correlation_data: msg.correlation_data.as_ref().map(|c| c.to_vec()),
        expiry_interval: msg.expiry_interval,
        subscription_ids: extra_ids,
        replayed,
    };
    Record {
        session: session.to_string(),
        at_ms,
        topic: msg.topic.clone(),
        payload: msg.payload.to_vec(),
        qos: u8::from(msg.qos),
        retain: msg.retain,
        properties: (!extra.is_empty()).then(|| serde_json::to_vec(&extra).unwrap_or_default()),
    }
}

/// The message of `record` as of `now_ms` (its expiry counted down), and its
/// extra data. A record whose extra data cannot be read keeps its topic and
/// payload (and says why in the error).
pub fn message(record: Record, now_ms: u64) -> (Message, Extra, Option<String>) {
    let (extra, problem) = match record
        .properties
        .as_deref()
        .map(serde_json::from_slice::<Extra>)
    {
        None => (Extra::default(), None),
        Some(Ok(e)) => (e, None),
        Some(Err(e)) => (
            Extra::default(),
            Some(format!("unreadable properties: {e}")),
        ),
    };
    let waited = now_ms.saturating_sub(record.at_ms) / 1000;
    let msg = Message {
        topic: record.topic,
        payload: Bytes::from(record.payload),
        qos: QoS::try_from(record.qos).unwrap_or(QoS::AtLeastOnce),
        retain: record.retain,
        user_properties: extra.user_properties.clone(),
        content_type: extra.content_type.clone(),
        utf8: extra.utf8,
        response_topic: extra.response_topic.clone(),
        correlation_data: extra.correlation_data.clone().map(Bytes::from),
        expiry_interval: extra
            .expiry_interval
            .map(|s| s.saturating_sub(u32::try_from(waited).unwrap_or(u32::MAX))),
    };
    (msg, extra, problem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_round_trip() {
        let mut msg = Message::new(
            "a/b",
            Bytes::from_static(b"\xff\x00bytes"),
            QoS::ExactlyOnce,
        );
        msg.retain = true;
        msg.user_properties = vec![("k".into(), "v".into())];
        msg.content_type = Some("text/csv".into());
        msg.utf8 = false;
        msg.response_topic = Some("reply/1".into());
        msg.correlation_data = Some(Bytes::from_static(b"\x01\x02"));
        msg.expiry_interval = Some(60);
        let rec = record("s", 1_000_000, &msg, vec![3], vec!["a/+".into()]);
        let (back, extra, problem) = message(rec, 1_020_500);
        assert!(problem.is_none());
        let mut want = msg.clone();
        want.expiry_interval = Some(40);
        assert_eq!(back, want);
        assert_eq!(extra.subscription_ids, [3]);
        assert_eq!(extra.replayed, ["a/+"]);
        // A plain message has no extra data at all.
        let plain = record(
            "s",
            0,
            &Message::new("t", Bytes::new(), QoS::AtLeastOnce),
            vec![],
            vec![],
        );
        assert!(plain.properties.is_none());
    }
}
