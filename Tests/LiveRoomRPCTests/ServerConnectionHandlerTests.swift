import LiveRoomMessages
import Logging
import NIOCore
import NIOEmbedded
import Synchronization
import XCTest

@testable import LiveRoomRPC

/// The server's connection handler on an EmbeddedChannel: it decodes frames itself, so bytes may
/// arrive in any pieces.
final class ServerConnectionHandlerTests: XCTestCase {
    private func makeChannel(authenticate: (@Sendable (CallContext) -> RPCStatus?)? = nil) throws -> EmbeddedChannel {
        var registry = ServiceRegistry()
        registry.unary(TestService.unaryCall) { request, context in
            var r = SimpleResponse()
            // Metadata "n", when sent, overrides the size: shows which metadata the call saw.
            let size = context.metadata["n"].flatMap { Int($0) } ?? Int(request.responseSize)
            r.payload = ByteBuffer(repeating: 5, count: size)
            return r
        }
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let handler = ServerConnectionHandler(
            registry: registry, limits: .init(maxFrameSize: 1 << 20, maxConcurrentCalls: 8, gracePeriod: .seconds(1)),
            transport: .unix, authenticate: authenticate, logger: logger)
        return EmbeddedChannel(handler: handler)
    }

    private func unaryCallBytes(id: UInt32, responseSize: Int32, n: String? = nil, method: String = TestService.unaryCall.info.path) throws -> ByteBuffer {
        var header = CallHeader()
        header.method = method
        if let n {
            var e = MetadataEntry()
            e.key = "n"
            e.value = n
            header.metadata = [e]
        }
        var request = SimpleRequest()
        request.responseSize = responseSize
        var bytes = ByteBuffer(bytes: Frame.preface)
        FrameEncoder.encode(Frame(.headers, callID: id, payload: ByteBuffer(bytes: try header.serializedBytes())), into: &bytes)
        FrameEncoder.encode(Frame(.message, flags: .endStream, callID: id, payload: ByteBuffer(bytes: try request.serializedBytes())), into: &bytes)
        return bytes
    }

    private func written(_ channel: EmbeddedChannel) throws -> [Frame] {
        var all = ByteBuffer()
        while var part = try channel.readOutbound(as: ByteBuffer.self) { all.writeBuffer(&part) }
        var decoder = FrameDecoder(expectPreface: false)
        return try decoder.decodeAll(&all).compactMap { if case .frame(let f) = $0 { return f } else { return nil } }
    }

    func testAUnaryCallFedOneByteAtATimeIsAnsweredWithOneMessageAndOKInOneWrite() throws {
        let channel = try makeChannel()
        var bytes = try unaryCallBytes(id: 1, responseSize: 7)
        while let byte = bytes.readSlice(length: 1) {
            try channel.writeInbound(byte)
            if bytes.readableBytes > 0 { XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "nothing before the call is whole") }
        }
        let first = try XCTUnwrap(channel.readOutbound(as: ByteBuffer.self), "the answer")
        XCTAssertNil(try channel.readOutbound(as: ByteBuffer.self), "message and status go in one buffer")
        var decoder = FrameDecoder(expectPreface: false)
        var copy = first
        let frames = try decoder.decodeAll(&copy).compactMap { e -> Frame? in if case .frame(let f) = e { return f } else { return nil } }
        XCTAssertEqual(frames.map(\.type), [.message, .status])
        XCTAssertEqual(frames.map(\.callID), [1, 1])
        XCTAssertEqual(try SimpleResponse(buffer: frames[0].payload).payload.readableBytes, 7)
        XCTAssertEqual(frames[1].payload.readableBytes, 0, "an empty STATUS is OK")
    }

    func testTwoCallsInOneReadAreBothAnswered() throws {
        let channel = try makeChannel()
        var bytes = try unaryCallBytes(id: 1, responseSize: 1)
        var second = try unaryCallBytes(id: 2, responseSize: 2)
        second.moveReaderIndex(forwardBy: Frame.preface.count)
        bytes.writeBuffer(&second)
        try channel.writeInbound(bytes)
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.message, .status, .message, .status])
        XCTAssertEqual(frames.map(\.callID), [1, 1, 2, 2])
    }

    func testABadPrefaceGetsGoAwayAndTheRestIsNotRead() throws {
        let channel = try makeChannel()
        var bytes = ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n")
        var call = try unaryCallBytes(id: 1, responseSize: 1)
        bytes.writeBuffer(&call)
        try channel.writeInbound(bytes)
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.goAway])
        let goAway = try GoAway(buffer: frames[0].payload)
        XCTAssertTrue(goAway.message.contains("preface"), goAway.message)
        XCTAssertFalse(channel.isActive, "closed")
    }

    func testRepeatedHeadersAreReusedButEveryDifferenceCounts() throws {
        let channel = try makeChannel()
        var bytes = ByteBuffer(bytes: Frame.preface)
        let calls: [(UInt32, String?, String)] = [
            (1, "3", TestService.unaryCall.info.path), (2, "5", TestService.unaryCall.info.path),
            (3, "3", TestService.unaryCall.info.path), (4, "3", "/liveroom.testing.v1.TestService/Nope"),
            (5, "3", TestService.unaryCall.info.path), (6, nil, TestService.unaryCall.info.path),
        ]
        for (id, n, method) in calls {
            var one = try unaryCallBytes(id: id, responseSize: 1, n: n, method: method)
            one.moveReaderIndex(forwardBy: Frame.preface.count)
            bytes.writeBuffer(&one)
        }
        try channel.writeInbound(bytes)
        let frames = try written(channel)
        let sizes = try frames.filter { $0.type == .message }.map { try SimpleResponse(buffer: $0.payload).payload.readableBytes }
        XCTAssertEqual(sizes, [3, 5, 3, 3, 1], "each call saw its own metadata")
        let statuses = try frames.filter { $0.type == .status }.map { ($0.callID, try CallStatus(buffer: $0.payload).code) }
        XCTAssertEqual(statuses.map(\.0), [1, 2, 3, 4, 5, 6])
        XCTAssertEqual(statuses.map(\.1), [0, 0, 0, RPCStatus.Code.unimplemented.rawValue, 0, 0])
    }

    /// Every call's context reaches the connection through one shared object that refers back to
    /// the handler; the cycle must end with the connection, or each connection would leak.
    func testAClosedConnectionsHandlerIsReleased() throws {
        weak var released: ServerConnectionHandler?
        try {
            let channel = try makeChannel()
            released = try channel.pipeline.syncOperations.handler(type: ServerConnectionHandler.self)
            try channel.writeInbound(try unaryCallBytes(id: 1, responseSize: 3))
            XCTAssertEqual(try written(channel).filter { $0.type == .status }.count, 1)
            XCTAssertNotNil(released)
            _ = try channel.finish()
        }()
        XCTAssertNil(released, "the handler outlived its closed connection")
    }

    func testMetadataKeysAreCaseInsensitive() {
        var m = Metadata()
        m.add("Authorization", "Bearer x")
        m.add("x-Trace", "1")
        XCTAssertEqual(m["authorization"], "Bearer x")
        XCTAssertEqual(m["AUTHORIZATION"], "Bearer x")
        XCTAssertEqual(m["X-TRACE"], "1")
        XCTAssertNil(m["trace"])
        XCTAssertNil(m["Missing"])
        m.add("Ключ", "2")
        XCTAssertEqual(m["КЛЮЧ"], "2", "non-ASCII upper case is folded too")
        XCTAssertNil(Metadata()["x"])
    }

    func testTheAuthenticatorIsAskedOncePerDistinctHeadersAndItsRefusalsStand() throws {
        let asked = Mutex(0)
        let channel = try makeChannel { context in
            asked.withLock { $0 += 1 }
            return context.metadata["n"] == "3" ? nil : RPCStatus(.unauthenticated, "n must be 3")
        }
        var bytes = ByteBuffer(bytes: Frame.preface)
        for (id, n) in [(1, "3"), (2, "3"), (3, "4"), (4, "4"), (5, "3")] as [(UInt32, String)] {
            var one = try unaryCallBytes(id: id, responseSize: 1, n: n)
            one.moveReaderIndex(forwardBy: Frame.preface.count)
            bytes.writeBuffer(&one)
        }
        try channel.writeInbound(bytes)
        let statuses = try written(channel).filter { $0.type == .status }.map { try CallStatus(buffer: $0.payload) }
        XCTAssertEqual(statuses.map(\.code), [0, 0, RPCStatus.Code.unauthenticated.rawValue, RPCStatus.Code.unauthenticated.rawValue, 0])
        XCTAssertEqual(statuses[2].message, "n must be 3")
        // Call 2 repeats call 1's allowed headers; 4 repeats 3's refused ones, which are asked again.
        XCTAssertEqual(asked.withLock { $0 }, 4)
    }
}
