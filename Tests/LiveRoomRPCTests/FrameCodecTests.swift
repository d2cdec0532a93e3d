import LiveRoomMessages
import NIOCore
import NIOEmbedded
import XCTest

@testable import LiveRoomRPC

final class FrameCodecTests: XCTestCase {
    private func makeChannel(max: Int = 64, preface: Bool = false) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: max, expectPreface: preface)))
        return channel
    }

    private func encoded(_ frame: Frame) throws -> ByteBuffer {
        let channel = EmbeddedChannel(handler: FrameEncoder())
        try channel.writeOutbound(frame)
        var all = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
        return all
    }

    private func frame(_ type: FrameType, id: UInt32, _ bytes: [UInt8], flags: FrameFlags = []) -> Frame {
        Frame(type, flags: flags, callID: id, payload: ByteBuffer(bytes: bytes))
    }

    func testEncodedLayoutIsAsDocumented() throws {
        let bytes = Array(try encoded(frame(.message, id: 0x0102_0304, [0xAA, 0xBB], flags: .endStream)).readableBytesView)
        XCTAssertEqual(bytes, [0, 0, 0, 8, 2, 1, 1, 2, 3, 4, 0xAA, 0xBB])
    }

    func testAttachmentTravelsAfterTheBody() throws {
        let f = Frame(.message, flags: .attachment, callID: 7, payload: ByteBuffer(bytes: [1, 2]), attachment: ByteBuffer(bytes: [9, 9, 9]))
        let bytes = Array(try encoded(f).readableBytesView)
        XCTAssertEqual(bytes, [0, 0, 0, 15, 2, 2, 0, 0, 0, 7, 0, 0, 0, 2, 1, 2, 9, 9, 9])
        let channel = try makeChannel()
        try channel.writeInbound(ByteBuffer(bytes: bytes))
        guard case .frame(let decoded)? = try channel.readInbound(as: FrameEvent.self) else { return XCTFail("no frame") }
        let payload = try RPCPayload(frame: decoded)
        XCTAssertEqual(Array(payload.body.readableBytesView), [1, 2])
        XCTAssertEqual(payload.attachment.map { Array($0.readableBytesView) }, [9, 9, 9])
    }

    func testLargePayloadIsNotCopiedIntoTheHeader() throws {
        let big = ByteBuffer(repeating: 7, count: 4096)
        let channel = EmbeddedChannel(handler: FrameEncoder())
        try channel.writeOutbound(Frame(.message, callID: 1, payload: big))
        let header = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        let body = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self))
        XCTAssertEqual(header.readableBytes, Frame.headerLength)
        XCTAssertEqual(body, big)
    }

    func testFrameSplitAcrossReads() throws {
        let channel = try makeChannel()
        let bytes = Array(try encoded(frame(.message, id: 3, [1, 2, 3, 4, 5])).readableBytesView)
        for b in bytes.dropLast() {
            try channel.writeInbound(ByteBuffer(bytes: [b]))
            XCTAssertNil(try channel.readInbound(as: FrameEvent.self))
        }
        try channel.writeInbound(ByteBuffer(bytes: [bytes.last!]))
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.message, id: 3, [1, 2, 3, 4, 5])))
    }

    func testFramesCoalescedInOneRead() throws {
        let channel = try makeChannel()
        var all = try encoded(frame(.headers, id: 1, [1]))
        var second = try encoded(frame(.message, id: 1, []))
        var third = try encoded(frame(.end, id: 1, []))
        all.writeBuffer(&second)
        all.writeBuffer(&third)
        try channel.writeInbound(all)
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.headers, id: 1, [1])))
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.message, id: 1, [])))
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.end, id: 1, [])))
        XCTAssertNil(try channel.readInbound(as: FrameEvent.self))
    }

    func testOversizedFrameIsReportedAndSkippedWithoutBuffering() throws {
        let channel = try makeChannel(max: 64)
        var header = ByteBuffer()
        header.writeInteger(UInt32(6 + 10_000))
        header.writeInteger(FrameType.message.rawValue)
        header.writeInteger(UInt8(0))
        header.writeInteger(UInt32(5))
        try channel.writeInbound(header)
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .oversized(type: .message, callID: 5, length: 10_000))
        // The payload streams by in pieces and is dropped as it comes.
        for _ in 0..<9 { try channel.writeInbound(ByteBuffer(repeating: 1, count: 1000)) }
        XCTAssertNil(try channel.readInbound(as: FrameEvent.self))
        // The next frame decodes normally, also when it arrives with the last skipped bytes.
        var rest = ByteBuffer(repeating: 1, count: 1000)
        var next = try encoded(frame(.ping, id: 0, [1, 2, 3, 4, 5, 6, 7, 8]))
        rest.writeBuffer(&next)
        try channel.writeInbound(rest)
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.ping, id: 0, [1, 2, 3, 4, 5, 6, 7, 8])))
        XCTAssertNil(try channel.readInbound(as: FrameEvent.self))
    }

    func testZeroLengthIsAProtocolError() throws {
        let channel = try makeChannel()
        XCTAssertThrowsError(try channel.writeInbound(ByteBuffer(bytes: [0, 0, 0, 0, 1, 0, 0, 0, 0, 1]))) { error in
            XCTAssertTrue("\(error)".contains("shorter than the 6-byte frame header"), "\(error)")
        }
    }

    func testGarbageInsteadOfThePrefaceIsRejectedAtOnce() throws {
        let channel = try makeChannel(preface: true)
        XCTAssertThrowsError(try channel.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n"))) { error in
            XCTAssertTrue("\(error)".contains("bad connection preface"), "\(error)")
        }
    }

    func testPrefaceInPiecesThenFrames() throws {
        let channel = try makeChannel(preface: true)
        try channel.writeInbound(ByteBuffer(bytes: Array(Frame.preface.prefix(3))))
        XCTAssertNil(try channel.readInbound(as: FrameEvent.self))
        var rest = ByteBuffer(bytes: Array(Frame.preface.dropFirst(3)))
        var f = try encoded(frame(.end, id: 9, []))
        rest.writeBuffer(&f)
        try channel.writeInbound(rest)
        XCTAssertEqual(try channel.readInbound(as: FrameEvent.self), .frame(frame(.end, id: 9, [])))
    }

    func testTruncatedAttachmentHeaderIsInvalidArgument() {
        let f = Frame(.message, flags: .attachment, callID: 1, payload: ByteBuffer(bytes: [0, 0, 0, 9, 1]))
        XCTAssertThrowsError(try RPCPayload(frame: f)) { error in
            XCTAssertEqual((error as? RPCStatus)?.code, .invalidArgument)
        }
    }

    func testSharedFramesAreBuiltOnTheSecondAskAndMatchTheFrameWrittenInParts() throws {
        let shared = SharedFrames()
        let allocator = ByteBufferAllocator()
        let chunk = RPCPayload(body: ByteBuffer(bytes: [1, 2, 3]), attachment: ByteBuffer(repeating: 9, count: 5000))
        XCTAssertNil(shared.frame(chunk, callID: 1, allocator: allocator), "the first viewer with an id writes in parts")
        let whole = try XCTUnwrap(shared.frame(chunk, callID: 1, allocator: allocator), "the second shares one frame")
        XCTAssertEqual(whole, try encoded(chunk.frame(callID: 1)), "byte for byte the frame written in parts")
        let again = try XCTUnwrap(shared.frame(chunk, callID: 1, allocator: allocator))
        XCTAssertEqual(whole.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) },
                       again.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress) }, "built once, then shared")
        XCTAssertNil(shared.frame(chunk, callID: 2, allocator: allocator), "another call id has a frame of its own")
        let other = try XCTUnwrap(shared.frame(chunk, callID: 2, allocator: allocator))
        XCTAssertEqual(other, try encoded(chunk.frame(callID: 2)))

        // The same bytes in another buffer are another message; past four messages the oldest is forgotten.
        let copies = (0..<4).map { _ in RPCPayload(body: ByteBuffer(bytes: [1, 2, 3]), attachment: ByteBuffer(repeating: 9, count: 5000)) }
        for c in copies { XCTAssertNil(shared.frame(c, callID: 1, allocator: allocator)) }
        XCTAssertNil(shared.frame(chunk, callID: 1, allocator: allocator), "forgotten, so asked afresh")
    }

    func testAnAttachmentWithNowhereToGoIsRefusedNotDropped() throws {
        let media = ByteBuffer(bytes: [1, 2, 3])
        // A message type without a media field.
        XCTAssertThrowsError(try MessageCoding.decode(RPCPayload(body: ByteBuffer(), attachment: media), as: SimpleRequest.self)) { error in
            XCTAssertEqual((error as? RPCStatus)?.code, .invalidArgument)
            XCTAssertTrue((error as? RPCStatus)?.message.contains("takes no attachment") ?? false)
        }
        // A media-carrying type whose oneof holds no chunk.
        XCTAssertThrowsError(try MessageCoding.decode(RPCPayload(body: ByteBuffer(), attachment: media), as: WatchResponse.self)) { error in
            XCTAssertTrue((error as? RPCStatus)?.message.contains("no media chunk") ?? false, "\(error)")
        }
        // Media both inline and attached.
        var chunk = MediaChunk()
        chunk.payload = ByteBuffer(bytes: [9])
        var both = WatchResponse()
        both.message = .chunk(chunk)
        var body = ByteBuffer()
        try both.serialize(into: &body)
        XCTAssertThrowsError(try MessageCoding.decode(RPCPayload(body: body, attachment: media), as: WatchResponse.self)) { error in
            XCTAssertTrue((error as? RPCStatus)?.message.contains("both inline and as an attachment") ?? false, "\(error)")
        }
        // The ordinary case still works.
        chunk.payload = ByteBuffer()
        var ok = WatchResponse()
        ok.message = .chunk(chunk)
        body.clear()
        try ok.serialize(into: &body)
        let decoded = try MessageCoding.decode(RPCPayload(body: body, attachment: media), as: WatchResponse.self)
        guard case .chunk(let c)? = decoded.message else { return XCTFail("a chunk") }
        XCTAssertEqual(c.payload, media)
    }
}
