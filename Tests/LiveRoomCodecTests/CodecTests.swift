import LiveRoomMessages
import NIOCore
import XCTest

final class CodecTests: XCTestCase {
    /// Builds a JSON object that sets every field of `d` to a non-default value.
    private func filled(_ d: MessageDescriptor, depth: Int = 0) -> [String: Any] {
        var out: [String: Any] = [:]
        var oneofTaken: Set<Int> = []
        for (i, f) in d.fields.enumerated() {
            if f.isOneofMember {
                // Choose one member per oneof: the first one seen for its case slot.
                let slot = Int(f.pointer.pointee.quantifier_offset)
                if oneofTaken.contains(slot) { continue }
                oneofTaken.insert(slot)
            }
            let value: Any?
            switch f.type {
            case .int32, .sint32, .sfixed32: value = -7 - i
            case .uint32, .fixed32: value = 7 + i
            case .int64, .sint64, .sfixed64: value = "-\(1_000_000_000_000 + i)"
            case .uint64, .fixed64: value = "\(18_000_000_000_000_000_000 as UInt64 + UInt64(i))"
            case .float: value = 1.5
            case .double: value = -2.25
            case .bool: value = true
            case .string: value = "héllo \(f.name) 直播"
            case .bytes: value = Data([0, 1, 2, 255, UInt8(i)]).base64EncodedString()
            case .enumeration: value = f.enumType!.values.last!.name
            case .message: value = depth < 3 ? filled(f.messageType!, depth: depth + 1) : nil
            }
            guard let value else { continue }
            out[f.name] = f.isRepeated ? [value, value] : value
        }
        return out
    }

    private func roundTrip<M: ProtoMessage>(_ type: M.Type) throws {
        let d = M.protoDescriptor
        let original = try ProtoJSON.encode(object: filled(d), as: d)
        let typed = try M(buffer: original)
        var again = ByteBuffer()
        try typed.serialize(into: &again)
        XCTAssertEqual(try M(buffer: again), typed, d.fullName)
        // The typed layer must carry every field: the JSON views agree.
        XCTAssertEqual(
            try ProtoJSON.text(from: again, as: d), try ProtoJSON.text(from: original, as: d), d.fullName)
        if d.fieldCount > 0 { XCTAssertNotEqual(typed, M(), "\(d.fullName) decoded to its default") }
    }

    func testEveryMessageRoundTrips() throws {
        XCTAssertGreaterThan(AllMessages.types.count, 50)
        for type in AllMessages.types { try roundTrip(type) }
    }

    /// The C structs of one decode or encode live in 1 KiB of stack scratch; bigger messages spill
    /// to the heap, and both halves must come back whole.
    func testMessagesLargerThanTheScratchMemoryRoundTrip() throws {
        var list = ListRoomsResponse()
        for i in 0..<300 {
            var room = Room()
            room.roomId = "room-\(i)"
            room.title = String(repeating: "直播", count: i % 50)
            room.streamKey = "key-\(i)"
            list.rooms.append(room)
        }
        list.nextPageToken = "next"
        var bytes = ByteBuffer()
        try list.serialize(into: &bytes)
        XCTAssertGreaterThan(bytes.readableBytes, 8 * 1024)
        XCTAssertEqual(try ListRoomsResponse(buffer: bytes), list)

        var big = SimpleRequest()
        big.payload = ByteBuffer(bytes: (0..<5000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        var small = SimpleRequest()
        small.payload = ByteBuffer(bytes: [1, 2, 3])
        for m in [big, small, big] {
            var b = ByteBuffer()
            try m.serialize(into: &b)
            XCTAssertEqual(try SimpleRequest(buffer: b), m)
        }
    }

    func testAllTypesEdgeValues() throws {
        var m = AllTypes()
        m.i32 = .min
        m.i64 = .min
        m.u32 = .max
        m.u64 = .max
        m.s32 = -1
        m.s64 = .max
        m.f32 = 1
        m.f64 = .max
        m.sf32 = .min
        m.sf64 = -1
        m.fl = -0.5
        m.db = .pi
        m.flag = true
        m.text = "emoji 🎥 and 中文"
        m.blob = ByteBuffer(bytes: [0, 0, 0])
        m.color = .negative
        m.nested = EchoStatus()
        m.manyInts = [0, -1, .max]
        m.manyTexts = ["", "a"]
        m.manyNested = [EchoStatus(), { var e = EchoStatus(); e.code = 3; return e }()]
        m.manyColors = [.red, Color(rawValue: 77)]
        m.manyBlobs = [ByteBuffer(), ByteBuffer(bytes: [9])]
        m.choice = .choiceNumber(0)
        m.manyDoubles = [1.25, -3]
        m.manyFlags = [true, false, true]
        let decoded = try AllTypes(serializedBytes: m.serializedBytes())
        XCTAssertEqual(decoded, m)
        XCTAssertEqual(decoded.choice, .choiceNumber(0), "a oneof member set to its default stays chosen")
        XCTAssertNotNil(decoded.nested, "an empty sub-message is still present")
    }

    func testUnknownEnumValuesSurvive() throws {
        var m = AllTypes()
        m.color = Color(rawValue: 12345)
        m.manyColors = [Color(rawValue: -99)]
        let decoded = try AllTypes(serializedBytes: m.serializedBytes())
        XCTAssertEqual(decoded.color.rawValue, 12345)
        XCTAssertEqual(decoded.manyColors.map(\.rawValue), [-99])
        XCTAssertEqual(decoded.color.name, "12345")
        XCTAssertEqual(Color.red.name, "COLOR_RED")
    }

    func testInvalidUTF8IsRejected() {
        // field 14 (text), wire type 2, length 2, bytes C3 28 (an invalid sequence)
        XCTAssertThrowsError(try AllTypes(serializedBytes: [0x72, 0x02, 0xC3, 0x28])) { error in
            XCTAssertTrue("\(error)".contains("UTF-8"), "\(error)")
        }
        // the same inside a repeated string (field 19)
        XCTAssertThrowsError(try AllTypes(serializedBytes: [0x9A, 0x01, 0x01, 0xFF]))
    }

    func testNULInStringIsRejectedOnEncode() {
        var m = Room()
        m.title = "bad\u{0}title"
        XCTAssertThrowsError(try m.serializedBytes()) { error in
            XCTAssertTrue("\(error)".contains("liveroom.v1.Room.title contains a NUL"), "\(error)")
        }
        var r = ListRoomsResponse()
        r.rooms = [m]
        XCTAssertThrowsError(try r.serializedBytes())
    }

    func testMalformedInputIsAnError() {
        XCTAssertThrowsError(try Room(serializedBytes: [0x0F]))  // wire type 7
        XCTAssertThrowsError(try Room(serializedBytes: [0x0A, 0x05, 0x41]))  // truncated string
        XCTAssertThrowsError(try Room(serializedBytes: [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]))  // huge length
    }

    func testEmptyInputIsTheDefaultMessage() throws {
        XCTAssertEqual(try Room(serializedBytes: []), Room())
        XCTAssertEqual(try Room().serializedBytes(), [])
    }

    func testJSONConversion() throws {
        let d = CreateRoomRequest.protoDescriptor
        let bytes = try ProtoJSON.encode(
            text: #"{"title": "Launch", "kind": "ROOM_KIND_MEETING", "platformId": "self", "play_mode": 2}"#, as: d)
        let m = try CreateRoomRequest(buffer: bytes)
        XCTAssertEqual(m.title, "Launch")
        XCTAssertEqual(m.kind, .meeting)
        XCTAssertEqual(m.platformId, "self")
        XCTAssertEqual(m.playMode, .embedded)
        let json = try ProtoJSON.object(from: bytes, as: d)
        XCTAssertEqual(json["kind"] as? String, "ROOM_KIND_MEETING")
        XCTAssertEqual(json["request_id"] as? String, "")

        XCTAssertThrowsError(try ProtoJSON.encode(text: #"{"titel": "x"}"#, as: d)) { error in
            XCTAssertTrue("\(error)".contains("has no field \"titel\""), "\(error)")
        }
        XCTAssertThrowsError(try ProtoJSON.encode(text: #"{"kind": "PURPLE"}"#, as: d)) { error in
            XCTAssertTrue("\(error)".contains("ROOM_KIND_LIVE"), "lists the valid values: \(error)")
        }
        XCTAssertThrowsError(try ProtoJSON.encode(text: #"{"title": 5}"#, as: d))
        // 1 and 0 are numbers, not booleans; true is not a number.
        let sized = try ListRoomsRequest(buffer: ProtoJSON.encode(text: #"{"page_size": 1}"#, as: ListRoomsRequest.protoDescriptor))
        XCTAssertEqual(sized.pageSize, 1)
        XCTAssertThrowsError(try ProtoJSON.encode(text: #"{"page_size": true}"#, as: ListRoomsRequest.protoDescriptor))
        XCTAssertThrowsError(try ProtoJSON.encode(text: #"{"online_only": 1}"#, as: ListViewersRequest.protoDescriptor))
        XCTAssertThrowsError(try ProtoJSON.encode(text: "not json", as: d))
        XCTAssertThrowsError(
            try ProtoJSON.encode(text: #"{"page_size": 2147483648}"#, as: ListRoomsRequest.protoDescriptor)
        ) { error in
            XCTAssertTrue("\(error)".contains("range of Int32"), "\(error)")
        }
    }
}
