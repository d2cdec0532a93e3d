import LiveRoomMessages
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOEmbedded
import XCTest

@testable import LiveRoomRTMP

final class AMF0Tests: XCTestCase {
    func testRoundTripOfEveryKind() throws {
        let values: [AMF0] = [
            .string("connect"), .number(1), .boolean(true), .null, .undefined, .date(1.7e12),
            .object([("app", .string("live")), ("nested", .object([("n", .number(-2.5))]))]),
            .ecmaArray([("width", .number(320)), ("encoder", .string("Lavf"))]),
            .strictArray([.number(1), .string("two"), .null]),
            .string(String(repeating: "x", count: 70_000)),  // long string
            .number(.nan), .date(-.nan),  // found by the fuzzer: NaN must survive a round trip
        ]
        let decoded = try AMF0.decodeAll(AMF0.encode(values))
        XCTAssertEqual(decoded, values)
        XCTAssertEqual(decoded[6]["app"], .string("live"))
    }

    func testHostileInputIsRefusedNotCrashed() {
        // Truncated string, a lying array count, an unknown marker, nesting without end.
        let cases: [[UInt8]] = [
            [0x02, 0x00, 0x10, 0x41],
            [0x0A, 0xFF, 0xFF, 0xFF, 0xFF],
            [0x10],
            [UInt8](repeating: 0x0A, count: 1) + [0, 0, 0, 1] + [UInt8](repeating: 0, count: 0),
            Array(repeating: [0x03, 0x00, 0x01, 0x61], count: 100).flatMap { $0 },
            [0x03, 0x00, 0x00, 0x07],
        ]
        for bytes in cases {
            XCTAssertThrowsError(try AMF0.decodeAll(ByteBuffer(bytes: bytes)), "\(bytes.prefix(8))")
        }
    }
}

final class RTMPChunkTests: XCTestCase {
    func message(_ type: RTMPMessageType, csid: UInt32 = 4, stream: UInt32 = 1, timestamp: UInt32, size: Int) -> RTMPMessage {
        RTMPMessage(chunkStreamId: csid, type: type, messageStreamId: stream, timestamp: timestamp,
                    payload: ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(timestamp)) }))
    }

    /// Encodes with our encoder at a chunk size and decodes it back through a channel.
    func roundTrip(_ messages: [RTMPMessage], chunkSize: UInt32, feedBy step: Int) throws -> [RTMPMessage] {
        let encoder = RTMPChunkEncoder()
        var wire = ByteBuffer()
        try encoder.encode(data: RTMPControl.setChunkSize(chunkSize), out: &wire)
        for m in messages { try encoder.encode(data: m, out: &wire) }
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(RTMPChunkDecoder()))
        while wire.readableBytes > 0 {
            try channel.writeInbound(wire.readSlice(length: min(step, wire.readableBytes))!)
        }
        var out: [RTMPMessage] = []
        while let m = try channel.readInbound(as: RTMPMessage.self) { out.append(m) }
        XCTAssertEqual(out.first?.type, .setChunkSize)
        return Array(out.dropFirst())
    }

    func testMessagesSurviveChunkingAtAnySizeAndAnySplit() throws {
        let messages = [
            message(.video, timestamp: 0, size: 10_000), message(.audio, csid: 6, timestamp: 23, size: 300),
            message(.video, timestamp: 40, size: 0), message(.dataAMF0, csid: 300, timestamp: 41, size: 129),
            message(.video, csid: 70_000 % 65_599, timestamp: 0x0100_0000, size: 5000),  // extended timestamp, 3-byte csid
        ]
        for chunkSize in [1, 128, 4096, 65_536] {
            for step in [1, 7, 1000, 1 << 20] {
                XCTAssertEqual(try roundTrip(messages, chunkSize: UInt32(chunkSize), feedBy: step), messages, "chunk \(chunkSize) step \(step)")
            }
        }
    }

    func testInterleavedChunkStreamsAndRelativeTimestamps() throws {
        // Hand-written: two messages on csid 4 and 5 interleaved at chunk size 128, then a
        // type-1 header (delta 10) and a type-3 header reusing that delta.
        var b = ByteBuffer()
        func header0(_ csid: UInt8, ts: UInt32, length: UInt32, type: UInt8) {
            b.writeInteger(csid)
            b.writeUInt24(ts)
            b.writeUInt24(length)
            b.writeInteger(type)
            b.writeInteger(UInt32(1), endianness: .little)
        }
        header0(4, ts: 1000, length: 200, type: 9)
        b.writeRepeatingByte(0xAA, count: 128)
        header0(5, ts: 1005, length: 10, type: 8)
        b.writeRepeatingByte(0xBB, count: 10)
        b.writeInteger(UInt8(0xC4))  // fmt 3, csid 4: rest of the first message
        b.writeRepeatingByte(0xAA, count: 72)
        b.writeInteger(UInt8(0x44))  // fmt 1, csid 4: delta 10, length 3, type 9
        b.writeUInt24(10)
        b.writeUInt24(3)
        b.writeInteger(UInt8(9))
        b.writeBytes([1, 2, 3])
        b.writeInteger(UInt8(0xC4))  // fmt 3, new message: same delta, length, type
        b.writeBytes([4, 5, 6])
        var decoder = RTMPChunkDecoder()
        var got: [RTMPMessage] = []
        while let m = try decoder.next(&b) { if let m { got.append(m) } }
        XCTAssertEqual(got.map(\.chunkStreamId), [5, 4, 4, 4])
        XCTAssertEqual(got.map(\.timestamp), [1005, 1000, 1010, 1020])
        XCTAssertEqual(got.map(\.payload.readableBytes), [10, 200, 3, 3])
        XCTAssertEqual(got[3].payload, ByteBuffer(bytes: [4, 5, 6]))
    }

    func testLimitsCloseTheConnectionInsteadOfBuffering() throws {
        var limits = RTMPLimits()
        limits.maxMessageSize = 1000
        limits.maxBufferedBytes = 1500
        // Too large a message.
        var big = ByteBuffer(bytes: [0x04, 0, 0, 0, 0, 0x10, 0, 9, 1, 0, 0, 0])
        var d1 = RTMPChunkDecoder(limits: limits)
        XCTAssertThrowsError(try d1.next(&big)) { XCTAssertEqual(($0 as? RTMPError).map { "\($0)" }?.contains("exceeds"), true) }
        // Many unfinished messages on different chunk streams.
        var d2 = RTMPChunkDecoder(limits: limits)
        var many = ByteBuffer()
        for csid in UInt8(4)...8 {
            many.writeBytes([csid, 0, 0, 0, 0, 0x03, 0xE8, 9, 1, 0, 0, 0])  // 1000-byte message
            many.writeRepeatingByte(0, count: 128)
        }
        XCTAssertThrowsError(try { while try d2.next(&many) != nil {} }())
        // A continuation on a chunk stream never started.
        var d3 = RTMPChunkDecoder()
        var orphan = ByteBuffer(bytes: [0xC9, 1, 2, 3])
        XCTAssertThrowsError(try d3.next(&orphan))
    }

    func testHandshakeAnswersAndPassesOnWhatFollows() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(RTMPHandshakeHandler())
        let c1 = (0..<1536).map { UInt8(truncatingIfNeeded: $0) }
        try channel.writeInbound(ByteBuffer(bytes: [3] + c1.prefix(1000)))
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "nothing before C1 is complete")
        try channel.writeInbound(ByteBuffer(bytes: Array(c1.dropFirst(1000))))
        let reply = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(reply.readableBytes, 1 + 1536 * 2)
        XCTAssertEqual(reply.getInteger(at: 0, as: UInt8.self), 3)
        XCTAssertEqual(reply.getBytes(at: 1537, length: 1536), c1, "S2 echoes C1")
        try channel.writeInbound(ByteBuffer(bytes: [UInt8](repeating: 0, count: 1536) + [0x03, 0x42]))
        XCTAssertEqual(try channel.readInbound(as: ByteBuffer.self), ByteBuffer(bytes: [0x03, 0x42]), "bytes after C2 go on")
        try channel.writeInbound(ByteBuffer(bytes: [9]))
        XCTAssertEqual(try channel.readInbound(as: ByteBuffer.self), ByteBuffer(bytes: [9]), "the handler has left the pipeline")
    }

    func testHandshakeRefusesOtherVersions() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(RTMPHandshakeHandler())
        XCTAssertThrowsError(try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n")))
        XCTAssertFalse(channel.isActive, "closed")
    }

    func testAcknowledgerAcksEachWindowOnceAsked() throws {
        let channel = EmbeddedChannel(handler: RTMPAcknowledger())
        try channel.writeInbound(ByteBuffer(repeating: 0, count: 5000))
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "no window, no acknowledgements")
        channel.pipeline.triggerUserOutboundEvent(RTMPAcknowledger.PeerWindow(size: 4000), promise: nil)
        try channel.writeInbound(ByteBuffer(repeating: 0, count: 3000))
        var ack = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        var decoder = RTMPChunkDecoder()
        let m = try XCTUnwrap(try decoder.next(&ack) ?? nil)
        XCTAssertEqual(m.type, .acknowledgement)
        XCTAssertEqual(m.payload.getInteger(at: m.payload.readerIndex, as: UInt32.self), 8000, "bytes received so far")
        try channel.writeInbound(ByteBuffer(repeating: 0, count: 100))
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "not again until the next window")
    }
}

final class FLVMuxerTests: XCTestCase {
    func media(_ type: RTMPMessageType, _ bytes: [UInt8], at ts: UInt32) -> RTMPMessage {
        RTMPMessage(chunkStreamId: 4, type: type, messageStreamId: 1, timestamp: ts, payload: ByteBuffer(bytes: bytes))
    }

    func testHeadersKeyframesAndTagLayout() throws {
        var muxer = FLVMuxer()
        let file = muxer.fileHeader()
        XCTAssertTrue(file.header)
        XCTAssertEqual(Array(file.payload.readableBytesView), [0x46, 0x4C, 0x56, 1, 5, 0, 0, 0, 9, 0, 0, 0, 0])

        var meta = ByteBuffer()
        AMF0.string("@setDataFrame").encode(into: &meta)
        AMF0.string("onMetaData").encode(into: &meta)
        AMF0.ecmaArray([("width", .number(320))]).encode(into: &meta)
        let metaTag = try XCTUnwrap(muxer.tag(for: RTMPMessage(chunkStreamId: 4, type: .dataAMF0, payload: meta)))
        XCTAssertTrue(metaTag.header)
        var body = metaTag.payload
        body.moveReaderIndex(forwardBy: 11)
        XCTAssertEqual(try AMF0.decode(&body), .string("onMetaData"), "@setDataFrame is stripped")

        let avcConfig = try XCTUnwrap(muxer.tag(for: media(.video, [0x17, 0, 0, 0, 0, 1, 2], at: 0)))
        let aacConfig = try XCTUnwrap(muxer.tag(for: media(.audio, [0xAF, 0, 0x12, 0x10], at: 0)))
        let key = try XCTUnwrap(muxer.tag(for: media(.video, [0x17, 1, 0, 0, 0, 9, 9], at: 0x0100_0040)))
        let inter = try XCTUnwrap(muxer.tag(for: media(.video, [0x27, 1, 0, 0, 0, 8], at: 80)))
        let audio = try XCTUnwrap(muxer.tag(for: media(.audio, [0xAF, 1, 5], at: 81)))
        XCTAssertEqual([avcConfig, aacConfig, key, inter, audio].map(\.header), [true, true, false, false, false])
        XCTAssertEqual([avcConfig, aacConfig, key, inter, audio].map(\.keyframe), [false, false, true, false, false])
        XCTAssertEqual([file, metaTag, avcConfig, aacConfig, key].map(\.sequence), [1, 2, 3, 4, 5])

        // Tag: type 9, size 7, timestamp 0x000040 with extension 0x01, stream 0, data, previous tag size 18.
        XCTAssertEqual(Array(key.payload.readableBytesView),
                       [9, 0, 0, 7, 0, 0, 0x40, 0x01, 0, 0, 0, 0x17, 1, 0, 0, 0, 9, 9, 0, 0, 0, 18])
        XCTAssertNil(muxer.tag(for: media(.userControl, [0, 6], at: 0)), "not media")
        XCTAssertNil(muxer.tag(for: media(.video, [], at: 0)), "empty video carries nothing")
    }

    func testAudioIsBundledWithTheNextVideoFrame() throws {
        var muxer = FLVMuxer()
        var bundler = TagBundler()
        func add(_ type: RTMPMessageType, _ bytes: [UInt8], at ts: UInt32) -> [MediaChunk] {
            bundler.add(muxer.tag(for: media(type, bytes, at: ts))!)
        }
        XCTAssertEqual(bundler.add(muxer.fileHeader()).map(\.header), [true])
        XCTAssertEqual(add(.video, [0x17, 0, 0, 0, 0, 1], at: 0).map(\.header), [true], "sequence headers pass alone")
        XCTAssertEqual(add(.video, [0x17, 1, 0, 0, 0, 9], at: 0).map(\.keyframe), [true])
        XCTAssertTrue(add(.audio, [0xAF, 1, 1], at: 10).isEmpty, "audio waits for the next video frame")
        XCTAssertTrue(add(.audio, [0xAF, 1, 2], at: 20).isEmpty)
        let bundle = add(.video, [0x27, 1, 0, 0, 0, 8], at: 40)
        XCTAssertEqual(bundle.count, 1)
        XCTAssertEqual(bundle[0].timestampMs, 10, "the bundle starts when its first tag does")
        XCTAssertFalse(bundle[0].keyframe)
        XCTAssertEqual(bundle[0].payload.readableBytes, (11 + 3 + 4) * 2 + (11 + 6 + 4), "two audio tags and the video tag, whole")
        XCTAssertEqual(bundle[0].payload.getInteger(at: bundle[0].payload.readerIndex, as: UInt8.self), 8, "in arrival order")
        XCTAssertTrue(add(.audio, [0xAF, 1, 3], at: 50).isEmpty)
        XCTAssertEqual(bundler.flush().count, 1, "what waits is sent when the publisher stops")
        XCTAssertTrue(bundler.flush().isEmpty)
    }

    func testAudioOnlyStreamsStartAnywhere() throws {
        var muxer = FLVMuxer()
        let a = try XCTUnwrap(muxer.tag(for: media(.audio, [0x2F, 1, 2], at: 0)))  // MP3
        XCTAssertTrue(a.keyframe, "without video any audio frame is a place to start")
    }
}

/// Records what a session hands to the room.
final class RecordingIngest: RTMPIngest, @unchecked Sendable {
    let lock = NIOLock()
    var chunks: [MediaChunk] = []
    var finished: [String] = []
    var validKey = "sk_good"

    final class Publication: RTMPPublication, @unchecked Sendable {
        let owner: RecordingIngest
        init(_ owner: RecordingIngest) { self.owner = owner }
        func send(_ chunk: MediaChunk) async throws { owner.lock.withLock { owner.chunks.append(chunk) } }
        func finish(reason: String) async { owner.lock.withLock { owner.finished.append(reason) } }
    }

    func startPublishing(app: String, streamName: String, publisherId: String,
                         onEnd: @escaping @Sendable (String) -> Void) async throws -> any RTMPPublication {
        guard streamName == validKey else { throw RTMPRefusal(code: "NetStream.Publish.Unauthorized", "wrong stream key") }
        return Publication(self)
    }
}

final class RTMPSessionTests: XCTestCase {
    func session(_ ingest: RecordingIngest, sent: NIOLockedValueBox<[RTMPMessage]>, window: NIOLockedValueBox<UInt32> = .init(0)) -> RTMPSession {
        RTMPSession(ingest: ingest, app: "live", peer: "test", logger: Logger(label: "test"), onEnd: { _ in },
                    send: { m in sent.withLockedValue { $0.append(m) } }, setPeerWindow: { w in window.withLockedValue { $0 = w } })
    }

    func command(_ values: [AMF0], stream: UInt32 = 0) -> RTMPMessage {
        RTMPMessage(chunkStreamId: 3, type: .commandAMF0, messageStreamId: stream, payload: AMF0.encode(values))
    }

    func decode(_ m: RTMPMessage) throws -> [AMF0] { try AMF0.decodeAll(m.payload) }

    func testPublisherConversationAsFFmpegHasIt() async throws {
        let ingest = RecordingIngest()
        let sent = NIOLockedValueBox<[RTMPMessage]>([])
        let window = NIOLockedValueBox<UInt32>(0)
        var s = session(ingest, sent: sent, window: window)
        var next = try await s.handle(command([.string("connect"), .number(1), .object([("app", .string("live")), ("type", .string("nonprivate"))])]))
        XCTAssertEqual(next, .carryOn)
        var out = sent.withLockedValue { $0 }
        XCTAssertEqual(out.map(\.type), [.windowAckSize, .setPeerBandwidth, .setChunkSize, .commandAMF0])
        XCTAssertEqual(try decode(out[3])[0], .string("_result"))
        XCTAssertEqual(try decode(out[3])[3]["code"], .string("NetConnection.Connect.Success"))

        _ = try await s.handle(RTMPControl.windowAckSize(5_000_000))
        XCTAssertEqual(window.withLockedValue { $0 }, 5_000_000, "the peer's window goes to the acknowledger")

        sent.withLockedValue { $0 = [] }
        _ = try await s.handle(command([.string("releaseStream"), .number(2), .null, .string("sk_good")]))
        _ = try await s.handle(command([.string("FCPublish"), .number(3), .null, .string("sk_good")]))
        _ = try await s.handle(command([.string("createStream"), .number(4), .null]))
        out = sent.withLockedValue { $0 }
        XCTAssertEqual(try out.map { try decode($0)[1] }, [.number(2), .number(3), .number(4)], "each transaction answered")
        XCTAssertEqual(try decode(out[2])[3], .number(1), "stream id 1")

        sent.withLockedValue { $0 = [] }
        next = try await s.handle(command([.string("publish"), .number(5), .null, .string("sk_good?bitrate=1"), .string("live")], stream: 1))
        XCTAssertEqual(next, .carryOn)
        out = sent.withLockedValue { $0 }
        XCTAssertEqual(out.first?.type, .userControl, "stream begin")
        XCTAssertEqual(try decode(out[1])[3]["code"], .string("NetStream.Publish.Start"))
        XCTAssertEqual(out[1].messageStreamId, 1)

        _ = try await s.handle(RTMPMessage(chunkStreamId: 6, type: .video, messageStreamId: 1, timestamp: 0,
                                           payload: ByteBuffer(bytes: [0x17, 1, 0, 0, 0, 1])))
        _ = try await s.handle(command([.string("FCUnpublish"), .number(6), .null, .string("sk_good")]))
        ingest.lock.withLock {
            XCTAssertEqual(ingest.chunks.map(\.header), [true, false], "FLV header, then the tag")
            XCTAssertEqual(ingest.finished, ["publisher unpublished"])
        }
    }

    func testRefusalsAnswerWithAStatusAndClose() async throws {
        let ingest = RecordingIngest()
        let sent = NIOLockedValueBox<[RTMPMessage]>([])
        var s = session(ingest, sent: sent)
        let wrongApp = try await s.handle(command([.string("connect"), .number(1), .object([("app", .string("vod"))])]))
        XCTAssertEqual(wrongApp, .close)
        XCTAssertEqual(try decode(sent.withLockedValue { $0 }.last!)[3]["code"], .string("NetConnection.Connect.Rejected"))

        var s2 = session(ingest, sent: sent)
        do {
            _ = try await s2.handle(command([.string("publish"), .number(2), .null, .string("sk_good")], stream: 1))
            XCTFail("publish before connect must fail")
        } catch {}
        _ = try await s2.handle(command([.string("connect"), .number(1), .object([("app", .string("live/"))])]))
        let refused = try await s2.handle(command([.string("publish"), .number(2), .null, .string("sk_bad")], stream: 1))
        XCTAssertEqual(refused, .close)
        let status = try decode(sent.withLockedValue { $0 }.last!)
        XCTAssertEqual(status[3]["level"], .string("error"))
        XCTAssertEqual(status[3]["code"], .string("NetStream.Publish.Unauthorized"))
        XCTAssertTrue(ingest.lock.withLock { ingest.chunks.isEmpty }, "no media accepted")
    }

    func testPingIsAnswered() async throws {
        let sent = NIOLockedValueBox<[RTMPMessage]>([])
        var s = session(RecordingIngest(), sent: sent)
        _ = try await s.handle(RTMPControl.userControl(event: 6, 12345))
        let pong = try XCTUnwrap(sent.withLockedValue { $0 }.first)
        XCTAssertEqual(Array(pong.payload.readableBytesView), [0, 7, 0, 0, 0x30, 0x39])
    }
}
