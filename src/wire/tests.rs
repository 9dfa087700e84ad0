use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

use super::*;
use crate::hlc::NodeId;
use crate::membership::Status;
use crate::store::Slot;

// Lengths above 127 matter: postcard lengths are varints, so they exercise
// multi-byte length prefixes inside the payload.
fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn stamp() -> impl Strategy<Value = Stamp> {
    (any::<u64>(), any::<u64>()).prop_map(|(hlc, node)| Stamp { hlc, node: NodeId(node) })
}

fn incarnation() -> impl Strategy<Value = Incarnation> {
    (any::<u64>(), any::<u64>()).prop_map(|(started_ms, node)| Incarnation { started_ms, node: NodeId(node) })
}

fn member_id() -> impl Strategy<Value = MemberId> {
    ("\\PC{0,12}", incarnation()).prop_map(|(name, incarnation)| MemberId { name, incarnation })
}

fn member_info() -> impl Strategy<Value = MemberInfo> {
    let status = prop_oneof![Just(Status::Active), Just(Status::Left), Just(Status::Forgotten)];
    (member_id(), status, proptest::option::of(any::<([u8; 4], u16)>())).prop_map(|(id, status, a)| MemberInfo {
        id,
        status,
        addr: a.map(|(ip, port)| (ip, port).into()),
    })
}

// Expiry presence gets its own arms rather than `option::of`, so both shapes
// are drawn often instead of depending on the option's weighting.
fn slot() -> impl Strategy<Value = Slot> {
    prop_oneof![
        (bytes(200), any::<u64>()).prop_map(|(data, e)| Slot::Value { data, expires_at_ms: Some(e) }),
        bytes(200).prop_map(|data| Slot::Value { data, expires_at_ms: None }),
        Just(Slot::Tombstone),
        any::<u64>().prop_map(|e| Slot::Evicted { expires_at_ms: Some(e) }),
        Just(Slot::Evicted { expires_at_ms: None }),
    ]
}

fn register() -> impl Strategy<Value = Register> {
    (slot(), stamp()).prop_map(|(val, marker)| Register { val, marker })
}

fn entries() -> impl Strategy<Value = Vec<(Bytes, Register)>> {
    vec((bytes(24), register()), 0..5)
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        any::<u16>().prop_map(|ours| Refusal::Version { ours }),
        (any::<i64>(), any::<u64>()).prop_map(|(offset_ms, max_offset_ms)| Refusal::Skew { offset_ms, max_offset_ms }),
        option::of(incarnation()).prop_map(|current| Refusal::Superseded { current }),
        option::of("[a-z0-9.-]{1,63}").prop_map(|certificate| Refusal::Name { certificate }),
        Just(Refusal::Stopping),
        Just(Refusal::InvalidName),
        Just(Refusal::Full),
        (version_range(), version_range()).prop_map(|(ours, theirs)| Refusal::Versions { ours, theirs }),
    ]
}

fn version_range() -> impl Strategy<Value = VersionRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(lo, hi)| VersionRange { lo, hi })
}

fn hello() -> impl Strategy<Value = Hello> {
    (any::<u16>(), member_id(), any::<u64>(), any::<u64>(), proptest::option::of(any::<([u8; 4], u16)>())).prop_map(
        |(version, from, physical_ms, hlc, listen)| Hello {
            version,
            from,
            physical_ms,
            hlc,
            listen: listen.map(|(ip, port)| (ip, port).into()),
        },
    )
}

fn delta_batch() -> impl Strategy<Value = DeltaBatch> {
    (member_id(), any::<u64>(), stamp(), option::of(vec(member_info(), 0..4)), entries())
        .prop_map(|(from, hlc, clear_below, members, entries)| DeltaBatch { from, hlc, clear_below, members, entries })
}

fn sync_hello() -> impl Strategy<Value = SyncHello> {
    (
        (member_id(), any::<u64>(), any::<bool>(), stamp()),
        (vec(member_info(), 0..4), any::<u64>(), any::<u64>(), any::<bool>()),
    )
        .prop_map(|((from, hlc, booted, clear_below), (members, root, count, holds_part))| SyncHello {
            from,
            hlc,
            booted,
            clear_below,
            members,
            root,
            count,
            holds_part,
        })
}

fn sync_msg() -> impl Strategy<Value = SyncMsg> {
    prop_oneof![
        sync_hello().prop_map(SyncMsg::Begin),
        sync_hello().prop_map(SyncMsg::Accept),
        refusal().prop_map(SyncMsg::Reject),
        (any::<u8>(), vec(any::<u32>(), 0..6), vec(any::<u64>(), 0..20))
            .prop_map(|(level, parents, hashes)| SyncMsg::Level { level, parents, hashes }),
        vec(
            (any::<u32>(), proptest::option::of(stamp()), vec((bytes(24), stamp()), 0..4), vec(any::<u32>(), 0..3))
                .prop_map(|(bucket, floor, items, stubs)| BucketSummary { bucket, floor, items, stubs }),
            0..4
        )
        .prop_map(SyncMsg::Summary),
        entries().prop_map(SyncMsg::Entries),
        vec(any::<u64>(), 0..6).prop_map(|want| SyncMsg::EndOfEntries { want }),
        vec((bytes(24), stamp()), 0..6).prop_map(|refused| SyncMsg::Finish { refused }),
        Just(SyncMsg::SummaryDone),
        vec(any::<u64>(), 0..6).prop_map(SyncMsg::Want),
        vec((bytes(24), stamp()), 0..6).prop_map(SyncMsg::Refusals),
        vec((any::<u32>(), any::<u64>()), 0..6).prop_map(SyncMsg::Digests),
        Just(SyncMsg::Busy),
        entries().prop_map(|e| SyncMsg::PackedEntries(PackedEntries::pack(e))),
        packed_summary().prop_map(SyncMsg::PackedSummary),
        (any::<u64>(), vec(any::<u64>(), 0..6)).prop_map(|(through, want)| SyncMsg::Compared { through, want }),
    ]
}

// Any shape, not only what `pack` makes: indices past the table, gaps that
// overflow, empty buckets out of order.
fn packed_summary() -> impl Strategy<Value = PackedSummary> {
    let packed_stamp = (any::<u32>(), any::<u64>()).prop_map(|(node, delta)| PackedStamp { node, delta });
    let bucket = (any::<u32>(), option::of(stamp()), vec((any::<u64>().prop_map(ListedHash), packed_stamp), 0..4))
        .prop_map(|(gap, floor, items)| PackedBucket { gap, floor, items, stubs: vec![0] });
    (any::<(u64, u64)>(), vec(any::<u64>(), 0..3), any::<u64>(), vec(bucket, 0..4), vec(any::<u32>(), 0..6)).prop_map(
        |(key, nodes, base, buckets, empty)| PackedSummary {
            key: HashKey(key.0, key.1),
            table: StampTable { nodes: nodes.into_iter().map(NodeId).collect(), base },
            buckets,
            empty,
        },
    )
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello().prop_map(Message::Hello),
        refusal().prop_map(Message::Refused),
        delta_batch().prop_map(Message::Deltas),
        sync_msg().prop_map(Message::Sync),
        bytes(300).prop_map(Message::Membership),
        member_id().prop_map(Message::Goodbye),
        vec(
            (bytes(24), bytes(100), any::<bool>()).prop_map(|(channel, message, sharded)| Publication {
                channel,
                message,
                sharded
            }),
            0..4
        )
        .prop_map(Message::Published),
        vec(
            (bytes(24), stamp(), any::<u32>(), any::<bool>()).prop_map(|(key, stamp, ttl_ms, released)| Lease {
                key,
                stamp,
                ttl_ms,
                released
            }),
            0..4
        )
        .prop_map(Message::Leases),
        version_range().prop_map(Message::Versions),
    ]
}

fn frame(msg: &Message) -> BytesMut {
    let mut b = BytesMut::new();
    FrameCodec::default().encode(msg, &mut b).expect("test messages fit the default frame");
    b
}

fn frame_around(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

/// One hand-built message per variant, so every variant is covered on every
/// run, whatever the random strategies happen to draw.
fn one_of_each() -> Vec<Message> {
    let id =
        MemberId { name: "peer-a".into(), incarnation: Incarnation { started_ms: 1_700_000_000_000, node: NodeId(7) } };
    let st = Stamp { hlc: Stamp::pack(1_700_000_000_123, 4), node: NodeId(7) };
    let members = vec![
        MemberInfo { id: id.clone(), status: Status::Active, addr: Some(([127, 0, 0, 1], 7000).into()) },
        MemberInfo { id: id.clone(), status: Status::Left, addr: None },
        MemberInfo { id: id.clone(), status: Status::Forgotten, addr: Some("[::1]:7001".parse().unwrap()) },
    ];
    let reg = |val| Register { val, marker: st };
    let regs = vec![
        (
            Bytes::from_static(b"v-exp"),
            reg(Slot::Value { data: Bytes::from(vec![0xAB; 130]), expires_at_ms: Some(u64::MAX) }),
        ),
        (Bytes::from_static(b"v"), reg(Slot::Value { data: Bytes::new(), expires_at_ms: None })),
        (Bytes::new(), reg(Slot::Tombstone)),
        (Bytes::from_static(b"e-exp"), reg(Slot::Evicted { expires_at_ms: Some(0) })),
        (Bytes::from_static(b"e"), reg(Slot::Evicted { expires_at_ms: None })),
    ];
    let sh = SyncHello {
        from: id.clone(),
        hlc: st.hlc,
        booted: true,
        clear_below: Stamp::ZERO,
        members: members.clone(),
        root: u64::MAX,
        count: 5,
        holds_part: true,
    };
    vec![
        Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            from: id.clone(),
            physical_ms: 1_700_000_000_000,
            hlc: st.hlc,
            listen: Some("[::1]:7000".parse().unwrap()),
        }),
        Message::Refused(Refusal::Version { ours: PROTOCOL_VERSION }),
        Message::Refused(Refusal::Skew { offset_ms: i64::MIN, max_offset_ms: 500 }),
        Message::Refused(Refusal::Superseded { current: Some(id.incarnation) }),
        Message::Refused(Refusal::Superseded { current: None }),
        Message::Refused(Refusal::Name { certificate: Some("mallory".into()) }),
        Message::Refused(Refusal::Stopping),
        Message::Refused(Refusal::Versions { ours: PROTOCOL_VERSIONS, theirs: VersionRange { lo: 8, hi: 9 } }),
        Message::Deltas(DeltaBatch {
            from: id.clone(),
            hlc: st.hlc,
            clear_below: st,
            members: Some(members.clone()),
            entries: regs.clone(),
        }),
        Message::Deltas(DeltaBatch {
            from: id.clone(),
            hlc: 0,
            clear_below: Stamp::ZERO,
            members: None,
            entries: Vec::new(),
        }),
        Message::Sync(SyncMsg::Begin(sh.clone())),
        Message::Sync(SyncMsg::Accept(SyncHello { booted: false, members: Vec::new(), ..sh })),
        Message::Sync(SyncMsg::Reject(Refusal::Superseded { current: None })),
        Message::Sync(SyncMsg::Level { level: 3, parents: vec![0, 17, u32::MAX], hashes: vec![1, 2, u64::MAX] }),
        Message::Sync(SyncMsg::Summary(vec![
            BucketSummary { bucket: 0, floor: None, items: Vec::new(), stubs: Vec::new() },
            BucketSummary { bucket: 9, floor: Some(st), items: vec![(Bytes::from_static(b"k"), st)], stubs: vec![0] },
        ])),
        Message::Sync(SyncMsg::Entries(regs.clone())),
        Message::Sync(SyncMsg::PackedEntries(PackedEntries::pack(regs))),
        Message::Sync(SyncMsg::PackedSummary(PackedSummary::pack(
            vec![
                BucketSummary { bucket: 3, floor: None, items: Vec::new(), stubs: Vec::new() },
                BucketSummary {
                    bucket: 9,
                    floor: Some(st),
                    items: vec![(Bytes::from_static(b"k"), st)],
                    stubs: vec![0],
                },
                BucketSummary { bucket: 65_535, floor: None, items: vec![(Bytes::new(), st)], stubs: Vec::new() },
            ],
            HashKey(u64::MAX, 1),
        ))),
        Message::Sync(SyncMsg::EndOfEntries { want: vec![0, 1, 300, u64::MAX] }),
        Message::Sync(SyncMsg::Finish { refused: vec![(Bytes::from_static(b"k"), st)] }),
        Message::Sync(SyncMsg::Digests(vec![(9, u64::MAX), (70_000, 0)])),
        Message::Sync(SyncMsg::SummaryDone),
        Message::Sync(SyncMsg::Want(vec![7, 1, 128])),
        Message::Sync(SyncMsg::Refusals(vec![(Bytes::from_static(b"r"), st), (Bytes::new(), st)])),
        Message::Sync(SyncMsg::Busy),
        Message::Sync(SyncMsg::Compared { through: 300, want: vec![2, 1, 128] }),
        Message::Membership(Bytes::from(vec![0x5A; 300])),
        Message::Goodbye(id),
        Message::Published(vec![
            Publication { channel: Bytes::from_static(b"news"), message: Bytes::from_static(b"hi"), sharded: false },
            Publication { channel: Bytes::new(), message: Bytes::new(), sharded: true },
        ]),
        Message::Leases(vec![
            Lease { key: Bytes::from_static(b"user:1"), stamp: st, ttl_ms: 5000, released: false },
            Lease { key: Bytes::new(), stamp: st, ttl_ms: 0, released: true },
        ]),
        Message::Versions(PROTOCOL_VERSIONS),
    ]
}

/// Whatever a decoder accepted must survive a re-encode unchanged, or the
/// codec would relay something other than what it was given.
fn assert_reencodes(msg: &Message) {
    let again = FrameCodec::default().decode(&mut frame(msg)).expect("re-encoded message decodes");
    assert_eq!(again.as_ref(), Some(msg));
}

/// Drains `src` with `decode` as a connection would, checking that a
/// `None` leaves the buffer as it was.
fn drain(codec: &FrameCodec, src: &mut BytesMut) -> Result<Vec<Message>, WireError> {
    let mut out = Vec::new();
    loop {
        let before = src.clone();
        match codec.decode(src)? {
            Some(m) => out.push(m),
            None => {
                assert_eq!(*src, before, "a partial frame must not be consumed");
                return Ok(out);
            }
        }
    }
}

#[test]
fn every_variant_round_trips() {
    let codec = FrameCodec::default();
    for msg in one_of_each() {
        let mut b = frame(&msg);
        assert_eq!(b.len(), LENGTH_PREFIX + encoded_len(&msg));
        assert_eq!(codec.decode(&mut b).unwrap(), Some(msg));
        assert!(b.is_empty());
    }
}

#[test]
fn stamps_are_sixteen_fixed_bytes() {
    for st in [
        Stamp::ZERO,
        Stamp { hlc: Stamp::pack(1_700_000_000_123, 4), node: NodeId(7) },
        Stamp { hlc: u64::MAX, node: NodeId(u64::MAX) },
    ] {
        let b = postcard::to_stdvec(&st).unwrap();
        let mut want = st.hlc.to_le_bytes().to_vec();
        want.extend_from_slice(&st.node.0.to_le_bytes());
        assert_eq!(b, want, "{st}");
        assert_eq!(postcard::from_bytes::<Stamp>(&b).unwrap(), st);
        assert_eq!(encoded_len(&st), 16);
    }
    assert_eq!(postcard::to_stdvec(&NodeId(1)).unwrap(), 1u64.to_le_bytes());
}

#[test]
fn every_variant_streams_in_one_buffer() {
    let msgs = one_of_each();
    let mut all = BytesMut::new();
    for m in &msgs {
        all.extend_from_slice(&frame(m));
    }
    assert_eq!(FrameCodec::default().decode_all(&all).unwrap(), msgs);
}

#[test]
fn empty_stream_is_no_messages() {
    assert!(FrameCodec::default().decode_all(&[]).unwrap().is_empty());
}

#[test]
fn oversized_prefix_is_refused_before_the_body_arrives() {
    let codec = FrameCodec::new(16);
    let mut src = BytesMut::from(&17u32.to_be_bytes()[..]);
    assert!(matches!(codec.decode(&mut src), Err(WireError::FrameTooLarge { len: 17, max: 16 })));
    assert!(matches!(codec.decode_all(&17u32.to_be_bytes()), Err(WireError::FrameTooLarge { len: 17, max: 16 })));

    // The worst case a peer can announce, against the default limit.
    let mut src = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
    assert!(matches!(
        FrameCodec::default().decode(&mut src),
        Err(WireError::FrameTooLarge { len, max: DEFAULT_MAX_FRAME }) if len == u32::MAX as usize
    ));
}

/// A peer announcing a maximal frame and sending a few bytes of it costs
/// what it sent plus one read's worth, not what it announced; the buffer
/// still grows to take the whole frame once it arrives.
#[test]
fn buffer_grows_with_bytes_received_not_with_the_announced_length() {
    let msg = Message::Membership(Bytes::from(vec![7; 3 * RESERVE_CHUNK]));
    let whole = frame(&msg);
    let announced = FrameCodec::default();
    let mut src = BytesMut::new();
    src.extend_from_slice(&(DEFAULT_MAX_FRAME as u32).to_be_bytes());
    src.extend_from_slice(b"few bytes");
    assert!(announced.decode(&mut src).unwrap().is_none());
    assert!(src.capacity() <= 2 * RESERVE_CHUNK, "reserved {} bytes for 13 received", src.capacity());

    // Fed a read at a time, the capacity stays within a read of what
    // arrived, and the frame decodes whole.
    let mut src = BytesMut::new();
    let mut out = None;
    for piece in whole.chunks(RESERVE_CHUNK / 4) {
        src.extend_from_slice(piece);
        if let Some(m) = announced.decode(&mut src).unwrap() {
            out = Some(m);
        } else {
            assert!(src.capacity() <= 2 * (src.len() + RESERVE_CHUNK), "{} for {}", src.capacity(), src.len());
        }
    }
    assert_eq!(out, Some(msg));
}

#[test]
fn frame_of_exactly_max_is_accepted() {
    let msg = Message::Membership(Bytes::from(vec![1; 100]));
    let len = encoded_len(&msg);
    let codec = FrameCodec::new(len);
    let mut b = BytesMut::new();
    codec.encode(&msg, &mut b).unwrap();
    // The prefix alone is not an error at the limit, only incomplete.
    assert!(codec.decode(&mut b.clone().split_to(LENGTH_PREFIX)).unwrap().is_none());
    assert_eq!(codec.decode(&mut b).unwrap(), Some(msg));
}

#[test]
fn oversized_message_is_not_encoded() {
    let msg = Message::Membership(Bytes::from(vec![1; 100]));
    let len = encoded_len(&msg);
    let codec = FrameCodec::new(len - 1);
    let mut dst = BytesMut::from(&b"earlier frames"[..]);
    let err = codec.encode(&msg, &mut dst).unwrap_err();
    assert!(matches!(err, WireError::MessageTooLarge { len: l, max } if l == len && max == len - 1), "{err:?}");
    assert_eq!(&dst[..], b"earlier frames");
    assert!(codec.encode_to_bytes(&msg).is_err());
}

#[test]
fn codec_limit_is_clamped_to_what_the_prefix_can_carry() {
    // A larger limit would let `encode` write a wrapped u32 length, and the
    // peer would then parse the rest of the body as further frames.
    assert_eq!(FrameCodec::new(usize::MAX).max_frame(), u32::MAX as usize);
    assert_eq!(FrameCodec::new(1 << 20).max_frame(), 1 << 20);
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    for msg in one_of_each() {
        let mut body = postcard::to_stdvec(&msg).unwrap();
        body.extend_from_slice(&[0, 0, 0]);
        assert!(matches!(decode_payload(&body), Err(WireError::TrailingBytes(3))));
        let mut src = BytesMut::from(&frame_around(&body)[..]);
        assert!(matches!(FrameCodec::default().decode(&mut src), Err(WireError::TrailingBytes(3))));
    }
}

#[test]
fn empty_frame_is_malformed() {
    assert!(matches!(FrameCodec::default().decode_all(&0u32.to_be_bytes()), Err(WireError::Malformed(_))));
}

/// Replaces the empty sequence at the end of `template`'s encoding with a
/// length of `u64::MAX` or `u32::MAX` elements, and checks that the small
/// frame is refused. Postcard only preallocates what the remaining input
/// could hold, so this must fail at the end of input, not in the allocator.
fn assert_huge_length_refused(template: Message) {
    let mut body = postcard::to_stdvec(&template).unwrap();
    assert_eq!(body.pop(), Some(0), "template must end with an empty sequence");
    for huge in [&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F][..], &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..]]
    {
        let mut hostile = body.clone();
        hostile.extend_from_slice(huge);
        // A few real-looking elements, so decoding gets under way first.
        hostile.extend_from_slice(&[0; 32]);
        let res = FrameCodec::default().decode_all(&frame_around(&hostile));
        assert!(matches!(res, Err(WireError::Malformed(_))), "{res:?}");
    }
}

#[test]
fn huge_declared_lengths_are_refused() {
    assert_huge_length_refused(Message::Sync(SyncMsg::Entries(Vec::new())));
    assert_huge_length_refused(Message::Sync(SyncMsg::Summary(Vec::new())));
    assert_huge_length_refused(Message::Sync(SyncMsg::Summary(vec![BucketSummary {
        bucket: 1,
        floor: None,
        items: Vec::new(),
        stubs: Vec::new(),
    }])));
    assert_huge_length_refused(Message::Sync(SyncMsg::EndOfEntries { want: Vec::new() }));
    assert_huge_length_refused(Message::Sync(SyncMsg::Level { level: 1, parents: vec![0], hashes: Vec::new() }));
    assert_huge_length_refused(Message::Membership(Bytes::new()));
    assert_huge_length_refused(Message::Sync(SyncMsg::Want(Vec::new())));
    assert_huge_length_refused(Message::Sync(SyncMsg::Digests(Vec::new())));
    assert_huge_length_refused(Message::Deltas(DeltaBatch {
        from: MemberId { name: String::new(), incarnation: Incarnation { started_ms: 0, node: NodeId(0) } },
        hlc: 0,
        clear_below: Stamp::ZERO,
        members: None,
        entries: Vec::new(),
    }));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn round_trip(msg in message()) {
        let codec = FrameCodec::default();
        let mut b = BytesMut::new();
        codec.encode(&msg, &mut b).unwrap();
        prop_assert_eq!(b.len(), LENGTH_PREFIX + encoded_len(&msg));
        prop_assert_eq!(&codec.encode_to_bytes(&msg).unwrap()[..], &b[..]);
        prop_assert_eq!(decode_payload(&b[LENGTH_PREFIX..]).unwrap(), msg.clone());
        prop_assert_eq!(codec.decode(&mut b).unwrap(), Some(msg));
        prop_assert!(b.is_empty());
    }

    #[test]
    fn decode_all_keeps_order(msgs in vec(message(), 0..6)) {
        let codec = FrameCodec::default();
        let mut b = BytesMut::new();
        for m in &msgs {
            codec.encode(m, &mut b).unwrap();
        }
        prop_assert_eq!(codec.decode_all(&b).unwrap(), msgs);
    }

    #[test]
    fn byte_at_a_time_yields_each_message_once(msgs in vec(message(), 1..4)) {
        let codec = FrameCodec::default();
        let mut wire = BytesMut::new();
        let mut ends = Vec::new();
        for m in &msgs {
            codec.encode(m, &mut wire).unwrap();
            ends.push(wire.len());
        }
        let mut src = BytesMut::new();
        let mut got = Vec::new();
        for (i, byte) in wire.iter().enumerate() {
            src.put_u8(*byte);
            if let Some(m) = codec.decode(&mut src).unwrap() {
                // A message must appear on the last byte of its own frame.
                prop_assert_eq!(Some(&(i + 1)), ends.get(got.len()));
                got.push(m);
            }
        }
        prop_assert!(src.is_empty());
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn strict_prefixes_are_incomplete(msg in message(), lead in vec(message(), 0..2)) {
        let codec = FrameCodec::default();
        let whole = frame(&msg);
        for cut in 0..whole.len() {
            let part = &whole[..cut];
            let mut src = BytesMut::from(part);
            prop_assert!(codec.decode(&mut src).unwrap().is_none());
            prop_assert_eq!(&src[..], part);
            match codec.decode_all(part) {
                Ok(v) => prop_assert!(cut == 0 && v.is_empty(), "prefix of {} bytes decoded", cut),
                Err(WireError::Truncated { have, need }) => {
                    prop_assert_eq!(have, cut);
                    let want = if cut < LENGTH_PREFIX { LENGTH_PREFIX } else { whole.len() };
                    prop_assert_eq!(need, want);
                }
                Err(e) => prop_assert!(false, "prefix of {} bytes: {:?}", cut, e),
            }
        }

        // Complete frames ahead of the cut are not enough to make it whole.
        let mut stream = BytesMut::new();
        for m in &lead {
            stream.extend_from_slice(&frame(m));
        }
        stream.extend_from_slice(&whole[..whole.len() - 1]);
        let truncated = matches!(codec.decode_all(&stream), Err(WireError::Truncated { .. }));
        prop_assert!(truncated);
    }

    #[test]
    fn trailing_bytes_are_counted(msg in message(), extra in vec(any::<u8>(), 1..64)) {
        let mut body = postcard::to_stdvec(&msg).unwrap();
        body.extend_from_slice(&extra);
        let mut src = BytesMut::from(&frame_around(&body)[..]);
        let res = FrameCodec::default().decode(&mut src);
        prop_assert!(matches!(res, Err(WireError::TrailingBytes(n)) if n == extra.len()), "{:?}", res);
    }

    #[test]
    fn too_large_to_encode_leaves_dst_alone(msg in message(), before in vec(any::<u8>(), 0..16)) {
        let len = encoded_len(&msg);
        let codec = FrameCodec::new(len - 1);
        let mut dst = BytesMut::from(&before[..]);
        let res = codec.encode(&msg, &mut dst);
        prop_assert!(matches!(res, Err(WireError::MessageTooLarge { len: l, .. }) if l == len), "{:?}", res);
        prop_assert_eq!(&dst[..], &before[..]);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..4096)) {
        let codec = FrameCodec::new(1 << 20);
        if let Ok(msgs) = drain(&codec, &mut BytesMut::from(&data[..])) {
            msgs.iter().for_each(assert_reencodes);
        }
        if let Ok(msgs) = codec.decode_all(&data) {
            msgs.iter().for_each(assert_reencodes);
        }
        if let Ok(msg) = decode_payload(&data) {
            assert_reencodes(&msg);
        }
    }

    #[test]
    fn random_body_behind_a_valid_length_never_panics(body in vec(any::<u8>(), 0..4096)) {
        let codec = FrameCodec::new(1 << 20);
        let wire = frame_around(&body);
        // The whole frame is present, so the answer is never "wait".
        match codec.decode(&mut BytesMut::from(&wire[..])) {
            Ok(Some(m)) => assert_reencodes(&m),
            Ok(None) => prop_assert!(false, "a complete frame was reported incomplete"),
            Err(_) => {}
        }
        match codec.decode_all(&wire) {
            Ok(v) => prop_assert_eq!(v.len(), 1),
            Err(e) => prop_assert!(!matches!(e, WireError::Truncated { .. }), "{:?}", e),
        }
    }

    // Random bytes rarely get past the first enum tag; corrupting valid
    // payloads reaches the nested decoders.
    #[test]
    fn corrupted_payloads_never_panic(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = postcard::to_stdvec(&msg).unwrap();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        if let Ok(m) = decode_payload(&body) {
            assert_reencodes(&m);
        }
        let short = &body[..cut.index(body.len() + 1)];
        if let Ok(m) = decode_payload(short) {
            assert_reencodes(&m);
        }
        let res = FrameCodec::default().decode_all(&frame_around(&body));
        if let Ok(msgs) = res {
            msgs.iter().for_each(assert_reencodes);
        }
    }
}

mod versions {
    //! Version ranges, and the hello stream against a peer of the build
    //! before them (protocol 7, one version), whose wire types are copied
    //! here as they were.

    use super::*;

    /// `Hello` of protocol 7 before version ranges.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ReleaseHello {
        version: u16,
        from: MemberId,
        physical_ms: u64,
        hlc: u64,
        listen: Option<std::net::SocketAddr>,
    }

    /// `Refusal` of protocol 7 before version ranges.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum ReleaseRefusal {
        Version { ours: u16 },
        Skew { offset_ms: i64, max_offset_ms: u64 },
        Superseded { current: Option<Incarnation> },
        Name { certificate: Option<String> },
        Stopping,
        InvalidName,
        Full,
    }

    /// `Message` of protocol 7 before version ranges (the variants after
    /// the hello's are never on a hello stream; their payloads are kept
    /// opaque).
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum ReleaseMessage {
        Hello(ReleaseHello),
        Refused(ReleaseRefusal),
        Deltas(DeltaBatch),
        Sync(SyncMsg),
        Membership(Bytes),
        Goodbye(MemberId),
        Published(Vec<Publication>),
        Leases(Vec<Lease>),
    }

    /// How that build reads a hello stream: the first frame only, decoded
    /// whole (trailing bytes in it are an error), and a hello accepted
    /// only with its own version.
    fn release_reads(stream: &[u8]) -> Result<ReleaseMessage, String> {
        let len = u32::from_be_bytes(stream[..4].try_into().unwrap()) as usize;
        let body = &stream[4..4 + len];
        let (m, rest) = postcard::take_from_bytes::<ReleaseMessage>(body).map_err(|e| e.to_string())?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()));
        }
        Ok(m)
    }

    fn id() -> MemberId {
        MemberId { name: "peer-a".into(), incarnation: Incarnation { started_ms: 1, node: NodeId(3) } }
    }

    fn range(lo: u16, hi: u16) -> VersionRange {
        VersionRange { lo, hi }
    }

    /// What this build writes on a hello stream: the hello, then its range.
    fn hello_stream(version: u16, versions: VersionRange) -> BytesMut {
        let hello = Hello {
            version,
            from: id(),
            physical_ms: 1_700_000_000_000,
            hlc: 42,
            listen: Some("127.0.0.1:7000".parse().unwrap()),
        };
        let mut b = frame(&Message::Hello(hello));
        b.extend_from_slice(&frame(&Message::Versions(versions)));
        b
    }

    #[test]
    fn ranges_that_meet_use_the_highest_common_version() {
        assert_eq!(range(6, 7).negotiate(&range(6, 7)), Some(7));
        assert_eq!(range(6, 7).negotiate(&range(6, 6)), Some(6));
        assert_eq!(range(6, 7).negotiate(&range(7, 9)), Some(7));
        assert_eq!(range(6, 9).negotiate(&range(3, 8)), Some(8));
        assert_eq!(range(6, 7).negotiate(&range(8, 9)), None);
        assert_eq!(range(7, 7).negotiate(&range(6, 6)), None);
        assert_eq!(range(6, 7).negotiate(&range(7, 6)), None, "an empty range meets nothing");
        assert_eq!(PROTOCOL_VERSIONS, range(OLDEST_VERSION, PROTOCOL_VERSION));
        assert_eq!((range(6, 7).to_string(), range(6, 6).to_string()), ("6-7".to_owned(), "6".to_owned()));
    }

    proptest! {
        /// Both ends of a link pick the same version, one both speak, and
        /// none higher that both speak.
        #[test]
        fn negotiation_is_symmetric_and_picks_the_highest_common(a in (0u16..20, 0u16..20), b in (0u16..20, 0u16..20)) {
            let (a, b) = (range(a.0, a.1), range(b.0, b.1));
            let v = a.negotiate(&b);
            prop_assert_eq!(v, b.negotiate(&a));
            let common: Vec<u16> = (0..20).filter(|v| a.contains(*v) && b.contains(*v)).collect();
            prop_assert_eq!(v, common.last().copied());
        }
    }

    #[test]
    fn a_dialer_names_the_newest_version_a_single_version_peer_can_have() {
        assert_eq!(range(6, 7).hello_version(), 7);
        assert_eq!(range(6, 6).hello_version(), 6);
        assert_eq!(range(6, 9).hello_version(), LAST_SINGLE_VERSION);
        assert_eq!(range(8, 9).hello_version(), 8, "no single-version peer speaks it: any will refuse");
    }

    #[test]
    fn the_hello_stream_round_trips() {
        let stream = hello_stream(7, PROTOCOL_VERSIONS);
        let msgs = FrameCodec::default().decode_all(&stream).unwrap();
        assert!(
            matches!(&msgs[..], [Message::Hello(h), Message::Versions(v)] if h.version == 7 && *v == PROTOCOL_VERSIONS)
        );
        assert_eq!(Message::Versions(PROTOCOL_VERSIONS).since(), LEASES_SINCE);
    }

    /// A peer of the build before ranges reads this build's hello stream as
    /// a hello it accepts (version 7), never seeing the range after it;
    /// from a peer limited to 6 it reads version 6, which it refuses, as
    /// the ranges say.
    #[test]
    fn a_release_peer_reads_this_builds_hello() {
        let m = release_reads(&hello_stream(PROTOCOL_VERSIONS.hello_version(), PROTOCOL_VERSIONS)).unwrap();
        let ReleaseMessage::Hello(h) = m else { panic!("{m:?}") };
        assert_eq!((h.version, h.from, h.hlc), (7, id(), 42));
        let ReleaseMessage::Hello(h) = release_reads(&hello_stream(range(6, 6).hello_version(), range(6, 6))).unwrap()
        else {
            panic!()
        };
        assert_eq!(h.version, 6);
        // The refusal such a peer is sent is one it decodes; the one with
        // both ranges is not (and goes only to peers that sent a range).
        let r = release_reads(&frame(&Message::Refused(Refusal::Version { ours: 7 }))).unwrap();
        assert_eq!(r, ReleaseMessage::Refused(ReleaseRefusal::Version { ours: 7 }));
        let both = Refusal::Versions { ours: range(6, 7), theirs: range(8, 8) };
        assert!(release_reads(&frame(&Message::Refused(both))).is_err());
    }

    /// This build reads a release peer's hello stream: the hello, then the
    /// end of the stream (no range: it speaks the hello's version alone).
    #[test]
    fn this_build_reads_a_release_peers_hello() {
        let h = ReleaseHello { version: 7, from: id(), physical_ms: 5, hlc: 6, listen: None };
        let body = postcard::to_stdvec(&ReleaseMessage::Hello(h)).unwrap();
        let msgs = FrameCodec::default().decode_all(&frame_around(&body)).unwrap();
        assert_eq!(
            msgs,
            vec![Message::Hello(Hello { version: 7, from: id(), physical_ms: 5, hlc: 6, listen: None })],
            "nothing after the hello"
        );
        let body = postcard::to_stdvec(&ReleaseMessage::Refused(ReleaseRefusal::Version { ours: 7 })).unwrap();
        assert_eq!(decode_payload(&body).unwrap(), Message::Refused(Refusal::Version { ours: 7 }));
    }
}

mod packing {
    use std::collections::BTreeSet;

    use super::*;

    fn buckets() -> impl Strategy<Value = Vec<BucketSummary>> {
        let one = (option::of(stamp()), vec((bytes(24), stamp()), 0..4), vec(any::<u32>(), 0..2));
        (proptest::collection::btree_set(0u32..65_536, 0..6), vec(one, 6)).prop_map(|(ids, parts)| {
            ids.into_iter()
                .zip(parts)
                .map(|(bucket, (floor, items, stubs))| BucketSummary { bucket, floor, items, stubs })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Packing loses nothing: stamps as far apart as a u64 allows, from
        /// any nodes.
        #[test]
        fn entries_unpack_to_what_was_packed(mut e in entries()) {
            let got = PackedEntries::pack(e.clone()).unpack().unwrap();
            // In HLC order: the order of `Entries` means nothing.
            e.sort_by_key(|(_, r)| r.marker.hlc);
            prop_assert_eq!(got, e);
        }

        /// A packed summary unpacks to the same buckets, floors, stamps and
        /// stubs, in order (empty buckets back among the others), each key
        /// as its hash under the summary's key.
        #[test]
        fn summaries_unpack_to_what_was_packed(b in buckets(), key in any::<(u64, u64)>()) {
            let key = HashKey(key.0, key.1);
            let h = PackedSummary::pack(b.clone(), key).unpack().unwrap();
            prop_assert_eq!(h.key, key);
            prop_assert_eq!(h.bucket_ids(), b.iter().map(|b| b.bucket).collect::<Vec<_>>());
            let listed: Vec<&BucketSummary> =
                b.iter().filter(|b| !b.items.is_empty() || !b.stubs.is_empty() || b.floor.is_some()).collect();
            prop_assert_eq!(h.buckets.len(), listed.len());
            for (got, want) in h.buckets.iter().zip(listed) {
                prop_assert_eq!((got.bucket, got.floor, &got.stubs), (want.bucket, want.floor, &want.stubs));
                let hashed: Vec<(ListedHash, Stamp)> = want.items.iter().map(|(k, s)| (listed_hash(key, k), *s)).collect();
                prop_assert_eq!(&got.items, &hashed);
            }
        }

        /// Whatever a packed summary holds, unpacking never panics, and
        /// what it gives back names increasing empty buckets within the
        /// tree, as many as were sent.
        #[test]
        fn any_packed_summary_unpacks_or_fails_cleanly(p in packed_summary()) {
            let sent = p.empty.len();
            if let Ok(h) = p.unpack() {
                prop_assert_eq!(h.empty.len(), sent);
                prop_assert!(h.empty.windows(2).all(|w| w[0] < w[1]));
                prop_assert!(h.empty.iter().all(|b| (*b as usize) < crate::store::digest::BUCKETS));
            }
        }
    }

    #[test]
    fn a_stamp_outside_its_table_is_refused() {
        let table = StampTable { nodes: vec![NodeId(1), NodeId(2)], base: u64::MAX - 5 };
        assert_eq!(table.unpack(PackedStamp { node: 1, delta: 5 }).unwrap(), Stamp { hlc: u64::MAX, node: NodeId(2) });
        assert!(matches!(table.unpack(PackedStamp { node: 2, delta: 0 }), Err(BadPacking::Stamp { .. })));
        assert!(matches!(table.unpack(PackedStamp { node: 0, delta: 6 }), Err(BadPacking::Stamp { .. })));
        let e = |entries| PackedEntries { table: table.clone(), entries };
        let tomb = |node, delta| (Bytes::new(), PackedSlot::Tombstone, PackedStamp { node, delta });
        assert!(e(vec![tomb(9, 0)]).unpack().is_err());
        // Each register's stamp counts from the one before: the sum
        // overflows at the second.
        assert!(e(vec![tomb(0, 5)]).unpack().is_ok());
        assert!(matches!(e(vec![tomb(0, 5), tomb(0, 1)]).unpack(), Err(BadPacking::Stamp { .. })));
    }

    #[test]
    fn empty_buckets_must_increase_within_the_tree() {
        let summary = |empty: Vec<u32>| PackedSummary {
            key: HashKey::default(),
            table: StampTable::default(),
            buckets: Vec::new(),
            empty,
        };
        assert_eq!(summary(vec![0, 1, 65_534]).unpack().unwrap().bucket_ids(), vec![0, 1, 65_535]);
        for bad in [vec![3, 0], vec![65_536], vec![1, 65_535], vec![1, u32::MAX]] {
            assert_eq!(summary(bad.clone()).unpack(), Err(BadPacking::Empty), "{bad:?}");
        }
    }

    /// The writes of a few seconds by a few nodes: a packed register costs
    /// its key, its value and about 5 bytes of stamp, where a plain one
    /// costs 16; a listed key 8 bytes of hash where a plain one costs its
    /// length and its bytes.
    #[test]
    fn packing_saves_most_of_each_stamp() {
        let t0 = Stamp::pack(1_700_000_000_000, 0);
        let regs: Vec<(Bytes, Register)> = (0..500u64)
            .map(|i| {
                let marker =
                    Stamp { hlc: t0 + i * 3_000_000 / 500 * 65_536 / 1_000, node: NodeId(0x9e37_79b9 + i % 3) };
                let val = Slot::Value { data: Bytes::from(vec![7; 100]), expires_at_ms: None };
                (Bytes::from(format!("key:{i:011}")), Register { val, marker })
            })
            .collect();
        let plain = encoded_len(&SyncMsg::Entries(regs.clone()));
        let packed = encoded_len(&SyncMsg::PackedEntries(PackedEntries::pack(regs.clone())));
        assert!(packed + 500 * 12 <= plain, "{packed} bytes packed, {plain} plain");
        let mut ids: BTreeSet<u32> = BTreeSet::new();
        let summary: Vec<BucketSummary> = regs
            .iter()
            .map(|(k, r)| {
                let mut bucket = crate::store::digest::bucket_of(crate::store::digest::key_hash(k)) as u32;
                while !ids.insert(bucket) {
                    bucket += 1;
                }
                (bucket, BucketSummary { bucket, floor: None, items: vec![(k.clone(), r.marker)], stubs: Vec::new() })
            })
            .collect::<std::collections::BTreeMap<u32, BucketSummary>>()
            .into_values()
            .collect();
        let plain = encoded_len(&SyncMsg::Summary(summary.clone()));
        let packed = encoded_len(&SyncMsg::PackedSummary(PackedSummary::pack(summary, HashKey(1, 2))));
        assert!(packed + 500 * 18 <= plain, "{packed} bytes packed, {plain} plain");
    }

    #[test]
    fn packed_kinds_are_version_8() {
        let e = SyncMsg::PackedEntries(PackedEntries::pack(Vec::new()));
        assert_eq!((e.since(), Message::Sync(e).since()), (PACKED_SINCE, 8));
        assert_eq!(Message::Sync(SyncMsg::Busy).since(), OLDEST_VERSION);
        assert_eq!(SyncMsg::Entries(Vec::new()).packed(), SyncMsg::PackedEntries(PackedEntries::pack(Vec::new())));
        assert_eq!(SyncMsg::SummaryDone.packed(), SyncMsg::SummaryDone);
    }

    #[test]
    fn compared_is_version_9() {
        let c = SyncMsg::Compared { through: 1, want: vec![0] };
        assert_eq!((c.since(), Message::Sync(c.clone()).since()), (COMPARED_SINCE, 9));
        assert_eq!(c.clone().packed(), c);
    }
}
/// A frame costs memory within a constant factor of its length. The
/// smallest packed register (an empty key, a tombstone, a stamp of two
/// one-byte varints) is 4 bytes on the wire and 96 decoded, and unpacking
/// reuses that allocation rather than making a second one.
#[test]
fn packed_registers_cost_a_bounded_multiple_of_their_bytes_and_unpack_in_place() {
    let n = 1_000;
    let minimal = (Bytes::new(), PackedSlot::Tombstone, PackedStamp { node: 0, delta: 0 });
    let pe = PackedEntries { table: StampTable { nodes: vec![NodeId(1)], base: 0 }, entries: vec![minimal; n] };
    let wire = encoded_len(&SyncMsg::PackedEntries(pe.clone()));
    let held = n * std::mem::size_of::<(Bytes, PackedSlot, PackedStamp)>();
    assert!(wire >= 4 * n && held <= 25 * wire, "{held} bytes held for {wire} on the wire");
    assert!(std::mem::size_of::<(Bytes, Register)>() <= std::mem::size_of::<(Bytes, PackedSlot, PackedStamp)>());
    let before = pe.entries.as_ptr() as usize;
    let regs = pe.unpack().unwrap();
    assert_eq!((regs.len(), regs.as_ptr() as usize), (n, before), "unpacked in place");
}
