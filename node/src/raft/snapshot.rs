//! The replica as a snapshot carries it, in every format a node has written (a node
//! restores a snapshot an older version wrote).

use serde::{Deserialize, Serialize};
use switchboard_proto::peer::{ConnectionRecord, NodeId};

use super::codec::{decode_stored as decode, encode};
use crate::history::{Assignment, Assignments};
use std::sync::Arc;

use crate::presence::Replica;
use crate::presence::claims::{Claimer, Claims};
use crate::presence::connection::ConnectionId;
use crate::presence::events::EventId;
use crate::presence::registry::Owed;
use crate::presence::revocations::Revocations;

/// The replica as a snapshot carries it.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
    incarnations: Vec<(NodeId, u64)>,
    assignments: Vec<(u16, Assignment)>,
    claims: Vec<(String, u64, Claimer)>,
    clock_ms: u64,
    shards: Vec<(u16, Vec<NodeId>)>,
    /// (user, before, until_ms, index).
    revocations: Vec<(String, u64, u64, u64)>,
    /// Live bridged connections: (node, connection, scope).
    bridged: Vec<(NodeId, String, Vec<u8>)>,
    /// Disconnect calls owed to the backend.
    owed: Vec<OwedRecord>,
}

/// An owed disconnect as a snapshot carries it.
#[derive(Serialize, Deserialize)]
struct OwedRecord {
    node: NodeId,
    connection: String,
    user: String,
    scope: Vec<u8>,
    code: u16,
    reason: String,
    event: Option<(u64, u32)>,
}

/// A snapshot written before revocations.
#[derive(Deserialize)]
struct SnapshotBodyV5 {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
    incarnations: Vec<(NodeId, u64)>,
    assignments: Vec<(u16, Assignment)>,
    claims: Vec<(String, u64, Claimer)>,
    clock_ms: u64,
    shards: Vec<(u16, Vec<NodeId>)>,
}

/// A snapshot written before presence shards.
#[derive(Deserialize)]
struct SnapshotBodyV4 {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
    incarnations: Vec<(NodeId, u64)>,
    assignments: Vec<(u16, Assignment)>,
    claims: Vec<(String, u64, Claimer)>,
    clock_ms: u64,
}

/// A snapshot written before presence events (no clock).
#[derive(Deserialize)]
struct SnapshotBodyV3 {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
    incarnations: Vec<(NodeId, u64)>,
    assignments: Vec<(u16, Assignment)>,
    claims: Vec<(String, u64, Claimer)>,
}

/// A snapshot written before idempotency claims.
#[derive(Deserialize)]
struct SnapshotBodyV2 {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
    incarnations: Vec<(NodeId, u64)>,
    assignments: Vec<(u16, Assignment)>,
}

/// A snapshot written before incarnations and history (peer protocol 2).
#[derive(Deserialize)]
struct SnapshotBodyV1 {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
}

/// The replica as snapshot bytes.
pub fn snapshot_of(replica: &Replica) -> anyhow::Result<Vec<u8>> {
    Ok(encode(&SnapshotBody {
        connections: replica.presence.records().collect(),
        removed: replica.removed.iter().copied().collect(),
        incarnations: replica.incarnations.iter().map(|(n, i)| (*n, *i)).collect(),
        assignments: replica.assignments.iter().map(|(b, a)| (b, *a)).collect(),
        claims: replica.claims.entries(),
        clock_ms: replica.clock_ms,
        shards: replica
            .shards
            .iter()
            .map(|(s, v)| (*s, v.clone()))
            .collect(),
        revocations: replica
            .revocations
            .iter()
            .map(|(u, r)| (u.to_owned(), r.before, r.until_ms, r.index))
            .collect(),
        bridged: replica
            .presence
            .bridged()
            .map(|(c, scope)| (c.node(), c.to_string(), scope.to_vec()))
            .collect(),
        owed: replica
            .presence
            .owed()
            .map(|(c, o)| OwedRecord {
                node: c.node(),
                connection: c.to_string(),
                user: o.user.to_string(),
                scope: o.scope.to_vec(),
                code: o.code,
                reason: o.reason.to_owned(),
                event: o.event.map(|e| (e.index, e.ordinal)),
            })
            .collect(),
    })?)
}

/// A replica from snapshot bytes (either format).
pub fn restore(bytes: &[u8]) -> anyhow::Result<Replica> {
    if let Ok(body) = decode::<SnapshotBody>(bytes) {
        let mut revocations = Revocations::default();
        for (user, before, until_ms, index) in body.revocations {
            revocations.revoke(user, before, until_ms, index, 0);
        }
        let mut replica = Replica::from_parts(
            body.connections,
            body.removed,
            body.incarnations,
            Assignments::from_entries(body.assignments),
        )
        .with_claims(Claims::from_entries(body.claims), body.clock_ms)
        .with_shards(body.shards)
        .with_revocations(revocations);
        let bridged = body
            .bridged
            .into_iter()
            .map(|(node, c, scope)| (ConnectionId::new(node, &c), Arc::from(scope)));
        let owed = body.owed.into_iter().map(|o| {
            let owed = Owed {
                user: Arc::from(o.user),
                scope: Arc::from(o.scope),
                code: o.code,
                reason: Owed::reason_of(&o.reason),
                event: o.event.map(|(index, ordinal)| EventId { index, ordinal }),
            };
            (ConnectionId::new(o.node, &o.connection), owed)
        });
        replica.presence.restore_bridge(bridged, owed);
        return Ok(replica);
    }
    if let Ok(v5) = decode::<SnapshotBodyV5>(bytes) {
        return Ok(Replica::from_parts(
            v5.connections,
            v5.removed,
            v5.incarnations,
            Assignments::from_entries(v5.assignments),
        )
        .with_claims(Claims::from_entries(v5.claims), v5.clock_ms)
        .with_shards(v5.shards));
    }
    if let Ok(v4) = decode::<SnapshotBodyV4>(bytes) {
        return Ok(Replica::from_parts(
            v4.connections,
            v4.removed,
            v4.incarnations,
            Assignments::from_entries(v4.assignments),
        )
        .with_claims(Claims::from_entries(v4.claims), v4.clock_ms));
    }
    if let Ok(v3) = decode::<SnapshotBodyV3>(bytes) {
        return Ok(Replica::from_parts(
            v3.connections,
            v3.removed,
            v3.incarnations,
            Assignments::from_entries(v3.assignments),
        )
        .with_claims(Claims::from_entries(v3.claims), 0));
    }
    if let Ok(v2) = decode::<SnapshotBodyV2>(bytes) {
        return Ok(Replica::from_parts(
            v2.connections,
            v2.removed,
            v2.incarnations,
            Assignments::from_entries(v2.assignments),
        ));
    }
    match decode::<SnapshotBodyV1>(bytes) {
        Ok(old) => Ok(Replica::from_parts(
            old.connections,
            old.removed,
            [],
            Assignments::default(),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Command;
    use crate::presence::tests::record;
    use switchboard_proto::peer::PresenceOp;

    #[test]
    fn a_snapshot_restores_the_same_replica() {
        let mut r = Replica::default();
        r.apply_test(Command::Presence(vec![
            PresenceOp::Connect(record(1, "1-a", "u")),
            PresenceOp::Connect(record(3, "3-a", "v")),
            PresenceOp::Connect(record(3, "3-b", "u")),
        ]));
        r.apply_test(Command::Remove(9));
        r.apply_test(Command::Bind {
            node: 1,
            incarnation: 11,
        });
        r.apply_test(Command::ShardFormed {
            shard: 2,
            voters: vec![1, 3, 4],
        });
        r.apply_test(Command::Revoke {
            user: "u".into(),
            before: 100,
            until_ms: 9_000_000,
            at_ms: 5,
        });
        // A bridged connection alive, one ended (owed), one of a purged node (owed).
        r.apply_test(Command::Presence(vec![
            PresenceOp::ConnectBridged {
                record: record(1, "1-b", "w"),
                scope: bytes::Bytes::from_static(b"a"),
            },
            PresenceOp::ConnectBridged {
                record: record(1, "1-c", "w"),
                scope: bytes::Bytes::from_static(b"b"),
            },
            PresenceOp::ConnectBridged {
                record: record(3, "3-c", "x"),
                scope: bytes::Bytes::from_static(b"c"),
            },
            PresenceOp::LeaveOwed {
                node: 1,
                connection: "1-c".into(),
                user: "w".into(),
                code: 1000,
            },
            PresenceOp::PurgeNode { node: 3 },
        ]));
        assert_eq!(r.presence.owed_len(), 2);
        assert_eq!(r.presence.bridged().count(), 1);
        let restored = restore(&snapshot_of(&r).expect("encodes")).expect("decodes");
        assert_eq!(restored, r);
        assert!(restore(b"\xff\xff garbage").is_err());
        // A snapshot of the format before incarnations still restores.
        #[derive(Serialize)]
        struct Old {
            connections: Vec<ConnectionRecord>,
            removed: Vec<NodeId>,
        }
        let old = encode(&Old {
            connections: r.presence.records().collect(),
            removed: vec![9],
        })
        .expect("encodes");
        let restored = restore(&old).expect("the old format decodes");
        let mut records: Vec<_> = restored.presence.records().collect();
        let mut expected: Vec<_> = r.presence.records().collect();
        records.sort_by(|a, b| a.connection.cmp(&b.connection));
        expected.sort_by(|a, b| a.connection.cmp(&b.connection));
        assert_eq!(records, expected);
        assert_eq!(
            restored.presence.owed_len(),
            0,
            "nothing was owed before the bridge"
        );
        assert!(restored.incarnations.is_empty());
    }
}
