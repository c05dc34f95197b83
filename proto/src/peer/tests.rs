use super::*;
use proptest::prelude::*;

fn forward() -> impl Strategy<Value = Forward> {
    (
        ".{0,20}",
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<u64>(),
    )
        .prop_map(|(group, payload, origin)| Forward {
            text: std::str::from_utf8(&payload).is_ok(),
            group,
            payload: Bytes::from(payload),
            origin,
            position: None,
        })
}

fn message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(sent_micros, connections, groups)| PeerMessage::Heartbeat {
                sent_micros,
                connections,
                groups
            }
        ),
        proptest::collection::vec(forward(), 0..4).prop_map(PeerMessage::Forward),
        (
            any::<u64>(),
            proptest::collection::vec((".{0,10}", any::<u32>()), 0..8),
            any::<u64>()
        )
            .prop_map(
                |(version, groups, holders)| PeerMessage::Interest(Interest::Full {
                    version,
                    groups,
                    holders
                })
            ),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(|body| PeerMessage::Raft {
            body: Bytes::from(body),
        }),
        route().prop_map(PeerMessage::Route),
        conn().prop_map(PeerMessage::Conn),
    ]
}

fn conn() -> impl Strategy<Value = Conn> {
    let target = prop_oneof![
        ".{0,20}".prop_map(ConnTarget::Connection),
        ".{0,20}".prop_map(ConnTarget::User),
    ];
    let action = prop_oneof![
        ".{0,20}".prop_map(ConnAction::Subscribe),
        ".{0,20}".prop_map(ConnAction::Unsubscribe),
        (proptest::collection::vec(any::<u8>(), 0..32), any::<bool>()).prop_map(
            |(payload, text)| ConnAction::Send {
                payload: Bytes::from(payload),
                text
            }
        ),
        (any::<u16>(), ".{0,20}").prop_map(|(code, reason)| ConnAction::Close { code, reason }),
        any::<u64>().prop_map(|before| ConnAction::Revoke { before }),
    ];
    prop_oneof![
        (any::<u64>(), target, action).prop_map(|(id, target, action)| Conn::Act {
            id,
            target,
            action
        }),
        (any::<u64>(), any::<u32>()).prop_map(|(id, count)| Conn::Acted { id, count }),
    ]
}

fn route() -> impl Strategy<Value = Route> {
    let nodes = || proptest::collection::vec((any::<u64>(), any::<u32>()), 0..4);
    prop_oneof![
        (any::<u64>(), ".{0,20}").prop_map(|(id, group)| Route::Lookup { id, group }),
        (
            any::<u64>(),
            ".{0,20}",
            proptest::option::of(nodes()),
            any::<u64>(),
            any::<bool>()
        )
            .prop_map(|(id, group, nodes, lease_ms, settled)| Route::Answer {
                id,
                group,
                nodes,
                lease_ms,
                settled
            }),
        (".{0,20}", nodes()).prop_map(|(group, nodes)| Route::Update { group, nodes }),
        (".{0,20}", any::<u64>()).prop_map(|(group, node)| Route::Lease { group, node }),
        (
            any::<u64>(),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))
        )
            .prop_map(|(id, pattern)| Route::Groups {
                id,
                pattern: pattern.map(Bytes::from)
            }),
        (
            any::<u64>(),
            proptest::collection::vec(".{0,10}", 0..4),
            any::<bool>()
        )
            .prop_map(|(id, groups, complete)| Route::GroupsAnswer {
                id,
                groups,
                complete
            }),
    ]
}

proptest! {
    #[test]
    fn peer_messages_round_trip(message in message()) {
        let bytes = message.encode().expect("encodes");
        prop_assert_eq!(PeerMessage::decode(&bytes).expect("decodes"), message);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = PeerMessage::decode(&bytes);
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let mut bytes = PeerMessage::InterestSyncRequest.encode().expect("encodes");
    bytes.push(0);
    assert!(matches!(
        PeerMessage::decode(&bytes),
        Err(PeerCodecError::Trailing(1))
    ));
}

#[test]
fn a_huge_declared_length_is_refused_without_allocating() {
    // Variant 6 (Forward) followed by a varint length of u64::MAX elements.
    let bytes = [6u8, 253, 255, 255, 255, 255, 255, 255, 255, 255];
    assert!(PeerMessage::decode(&bytes).is_err());
}
