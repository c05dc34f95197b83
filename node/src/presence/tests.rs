//! The registry and the batcher, driven directly.

use super::*;
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

/// A connection record for tests.
pub fn record(node: NodeId, connection: &str, user: &str) -> ConnectionRecord {
    ConnectionRecord {
        node,
        connection: connection.into(),
        user: user.into(),
        connected_at: 1_700_000_000_000,
    }
}

#[test]
fn connect_disconnect_and_purge() {
    let mut r = Registry::default();
    r.apply(PresenceOp::Connect(record(1, "1-1", "42")));
    r.apply(PresenceOp::Connect(record(2, "2-1", "42")));
    r.apply(PresenceOp::Connect(record(2, "2-2", "7")));
    assert_eq!(r.user("42").len(), 2);
    assert_eq!(r.node_connections(2), 2);
    r.apply(PresenceOp::Disconnect {
        node: 1,
        connection: "1-1".into(),
    });
    assert_eq!(r.user("42"), vec![record(2, "2-1", "42")]);
    r.apply(PresenceOp::PurgeNode { node: 2 });
    assert!(r.is_empty());
    assert_eq!(r.users(), 0);
    assert_eq!(r.node_connections(2), 0);
    // Applying again is harmless.
    r.apply(PresenceOp::PurgeNode { node: 2 });
    r.apply(PresenceOp::Disconnect {
        node: 1,
        connection: "1-1".into(),
    });
    assert!(r.is_empty());
}

#[test]
fn a_leave_names_its_user_and_ids_of_any_form_round_trip() {
    let mut r = Registry::default();
    r.apply(PresenceOp::Connect(record(1, "1-18f3a-1", "42")));
    r.apply(PresenceOp::Connect(record(1, "1-18f3a-2", "42")));
    r.apply(PresenceOp::Connect(record(1, "made-up", "7")));
    assert_eq!(
        r.user("42"),
        vec![record(1, "1-18f3a-1", "42"), record(1, "1-18f3a-2", "42")]
    );
    assert_eq!(r.user("7"), vec![record(1, "made-up", "7")]);
    let leave = |connection: &str, user: &str| PresenceOp::Leave {
        node: 1,
        connection: connection.into(),
        user: user.into(),
    };
    // Naming another user (or node) finds nothing.
    r.apply(leave("1-18f3a-1", "7"));
    r.apply(PresenceOp::Leave {
        node: 2,
        connection: "1-18f3a-1".into(),
        user: "42".into(),
    });
    assert_eq!((r.len(), r.users()), (3, 2));
    r.apply(leave("1-18f3a-1", "42"));
    assert_eq!(r.user("42"), vec![record(1, "1-18f3a-2", "42")]);
    r.apply(leave("made-up", "7"));
    assert_eq!((r.len(), r.users(), r.node_connections(1)), (1, 1, 1));
    let mut records: Vec<_> = r.records().collect();
    records.sort_by(|a, b| a.connection.cmp(&b.connection));
    assert_eq!(records, vec![record(1, "1-18f3a-2", "42")]);
}

#[test]
fn resync_replaces_a_nodes_connections_only() {
    let mut r = Registry::default();
    r.apply(PresenceOp::Connect(record(1, "1-1", "a")));
    r.apply(PresenceOp::Connect(record(2, "2-1", "b")));
    r.apply(PresenceOp::ResyncNode {
        node: 1,
        connections: vec![record(1, "1-9", "c"), record(3, "3-1", "intruder")],
    });
    assert!(r.user("a").is_empty());
    assert_eq!(r.user("c").len(), 1);
    assert_eq!(r.user("b").len(), 1);
    assert!(
        r.user("intruder").is_empty(),
        "a resync only speaks for its node"
    );
}

#[test]
fn the_same_ops_give_the_same_registry() {
    let ops = vec![
        PresenceOp::Connect(record(1, "1-1", "a")),
        PresenceOp::Connect(record(1, "1-2", "a")),
        PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        },
        PresenceOp::Connect(record(2, "2-1", "b")),
    ];
    let mut one = Registry::default();
    let mut two = Registry::default();
    for op in ops.clone() {
        one.apply(op);
    }
    for op in ops {
        two.apply(op);
    }
    assert_eq!(one, two);
}

#[test]
fn a_short_lived_connection_cancels_out_in_the_batch() {
    let mut b = Batcher::default();
    b.push(PresenceOp::Connect(record(1, "1-1", "a")));
    b.push(PresenceOp::Connect(record(1, "1-2", "a")));
    b.push(PresenceOp::Disconnect {
        node: 1,
        connection: "1-1".into(),
    });
    assert_eq!(b.take(), vec![PresenceOp::Connect(record(1, "1-2", "a"))]);
    assert!(b.is_empty());
}

#[test]
fn a_failed_batch_goes_back_in_front_and_a_resync_tells_the_truth() {
    let mut b = Batcher::default();
    b.push(PresenceOp::Connect(record(1, "1-1", "a")));
    let failed = b.take();
    b.push(PresenceOp::Connect(record(1, "1-2", "b")));
    b.requeue(failed);
    // A requeued connect may have committed after all: a disconnect no longer
    // cancels it, it follows it.
    b.push(PresenceOp::Disconnect {
        node: 1,
        connection: "1-1".into(),
    });
    assert_eq!(b.len(), 3);
    b.push(PresenceOp::Connect(record(1, "1-1", "a")));
    let mut r = Registry::default();
    for op in b.take() {
        r.apply(op);
    }
    assert_eq!(r.node_connections(1), 2);

    // The registry lost node 1 (purged while it was cut off); a resync restores it.
    r.apply(PresenceOp::PurgeNode { node: 1 });
    b.push(PresenceOp::Disconnect {
        node: 1,
        connection: "1-1".into(),
    });
    b.resync(1);
    assert_eq!(b.len(), 1);
    for op in b.take() {
        r.apply(op);
    }
    assert_eq!(r.user("b"), vec![record(1, "1-2", "b")]);
    assert!(r.user("a").is_empty());
    assert_eq!(b.live(), 1);
}

#[test]
fn a_large_resync_is_split_and_taken_in_bounded_batches() {
    let mut b = Batcher::default();
    let n = RESYNC_CHUNK + MAX_BATCH + 10;
    for i in 0..n {
        b.push(PresenceOp::Connect(record(4, &format!("4-{i:05}"), "u")));
    }
    b.take();
    b.resync(4);
    let mut r = Registry::default();
    r.apply(PresenceOp::Connect(record(4, "4-stale", "u")));
    let mut batches = 0;
    while !b.is_empty() {
        let batch = b.take_at_most(MAX_BATCH);
        assert!(batch.len() <= MAX_BATCH);
        for op in batch {
            if let PresenceOp::ResyncNode { connections, .. } = &op {
                assert_eq!(connections.len(), RESYNC_CHUNK);
            }
            r.apply(op);
        }
        batches += 1;
    }
    assert_eq!(batches, 2);
    assert_eq!(
        r.node_connections(4),
        n,
        "every live connection, the stale one gone"
    );
}

#[test]
fn a_bridged_connections_disconnect_is_owed_until_delivered_also_through_a_purge() {
    let bridged = |node, connection: &str, user: &str| PresenceOp::ConnectBridged {
        record: record(node, connection, user),
        scope: bytes::Bytes::from(format!("/{connection}")),
    };
    let owed = |r: &Registry| -> Vec<(String, u16, &'static str, String)> {
        r.owed()
            .map(|(c, o)| (c.to_string(), o.code, o.reason, o.user.to_string()))
            .collect()
    };
    let mut r = Registry::default();
    r.apply(bridged(1, "1-a-1", "u"));
    r.apply(bridged(2, "2-a-1", "v"));
    r.apply(PresenceOp::Connect(record(2, "2-a-2", "w")));
    assert_eq!(r.len(), 3);
    assert_eq!(r.owed_len(), 0, "nothing is owed while they live");
    // It ends on its node: it leaves, and its disconnect is owed with its code.
    r.apply(PresenceOp::LeaveOwed {
        node: 1,
        connection: "1-a-1".into(),
        user: "u".into(),
        code: 1001,
    });
    assert!(r.user("u").is_empty());
    assert_eq!(owed(&r), vec![("1-a-1".into(), 1001, "closed", "u".into())]);
    // Node 2 dies: its bridged connection is owed (1006), the plain one is not.
    r.apply(PresenceOp::PurgeNode { node: 2 });
    assert!(r.is_empty());
    assert_eq!(
        owed(&r),
        vec![
            ("1-a-1".into(), 1001, "closed", "u".into()),
            ("2-a-1".into(), 1006, "node_down", "v".into()),
        ]
    );
    let scope = r.owed().nth(1).map(|(_, o)| o.scope.to_vec());
    assert_eq!(scope.as_deref(), Some(&b"/2-a-1"[..]));
    // Made: owed no more. A repeat (a leader's retry) is harmless.
    for _ in 0..2 {
        r.apply(PresenceOp::Delivered {
            node: 2,
            connection: "2-a-1".into(),
            user: "v".into(),
        });
    }
    assert_eq!(owed(&r), vec![("1-a-1".into(), 1001, "closed", "u".into())]);
    // The end of a purged connection, arriving late, owes nothing more.
    r.apply(PresenceOp::LeaveOwed {
        node: 2,
        connection: "2-a-1".into(),
        user: "v".into(),
        code: 1000,
    });
    assert_eq!(r.owed_len(), 1);
    // A plain Leave of a bridged connection (the backend never heard of it) owes nothing.
    r.apply(bridged(1, "1-a-2", "u"));
    r.apply(PresenceOp::Leave {
        node: 1,
        connection: "1-a-2".into(),
        user: "u".into(),
    });
    assert_eq!(r.owed_len(), 1);
    assert_eq!(r.bridged().count(), 0);
}

#[test]
fn a_bridged_connect_still_queued_cancels_out_with_its_end() {
    let mut b = Batcher::default();
    b.push(PresenceOp::ConnectBridged {
        record: record(1, "1-a-1", "u"),
        scope: bytes::Bytes::new(),
    });
    b.push(PresenceOp::LeaveOwed {
        node: 1,
        connection: "1-a-1".into(),
        user: "u".into(),
        code: 1000,
    });
    assert!(
        b.is_empty(),
        "the backend never heard of it: nothing is owed"
    );
    assert_eq!(b.live(), 0);
}
