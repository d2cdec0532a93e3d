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
    private func makeChannel(authenticate: (@Sendable (CallContext) -> Admission)? = nil, untrusted: Int? = nil) throws -> EmbeddedChannel {
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
        var limits = ServerConnectionHandler.Limits(maxFrameSize: 1 << 20, maxConcurrentCalls: 8, gracePeriod: .seconds(1))
        limits.untrusted.maxConcurrentCalls = 4
        let handler = ServerConnectionHandler(
            registry: registry, limits: limits,
            transport: untrusted == nil ? .unix : .tcp, authenticate: authenticate,
            untrusted: untrusted.map { UntrustedCount(limit: $0) }, logger: logger)
        let channel = EmbeddedChannel(handler: handler)
        _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
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
            return context.metadata["n"] == "3" ? .trusted : .refused(RPCStatus(.unauthenticated, "n must be 3"))
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

    private func headersOnly(id: UInt32, metadata: [String: String] = [:], method: String = TestService.unaryCall.info.path) throws -> ByteBuffer {
        var header = CallHeader()
        header.method = method
        header.metadata = metadata.map { k, v in var e = MetadataEntry(); e.key = k; e.value = v; return e }
        var bytes = ByteBuffer()
        FrameEncoder.encode(Frame(.headers, callID: id, payload: ByteBuffer(bytes: try header.serializedBytes())), into: &bytes)
        return bytes
    }

    func testAConnectionWithoutCredentialsHasASmallBudgetUntilItPresentsThem() throws {
        let channel = try makeChannel(authenticate: { $0.metadata["authorization"] == "yes" ? .trusted : .open }, untrusted: 10)
        try channel.writeInbound(ByteBuffer(bytes: Frame.preface))
        // Calls left open (HEADERS without a request): the fifth is refused.
        for id in 1...5 as ClosedRange<UInt32> { try channel.writeInbound(try headersOnly(id: id)) }
        var statuses = try written(channel).filter { $0.type == .status }
        XCTAssertEqual(statuses.map(\.callID), [5])
        let refusal = try CallStatus(buffer: statuses[0].payload)
        XCTAssertEqual(refusal.code, RPCStatus.Code.resourceExhausted.rawValue)
        XCTAssertTrue(refusal.message.contains("without credentials"), refusal.message)
        // Credentials lift the budget to the connection's full limit (8 open calls here).
        for id in 6...9 as ClosedRange<UInt32> { try channel.writeInbound(try headersOnly(id: id, metadata: ["authorization": "yes"])) }
        XCTAssertEqual(try written(channel).filter { $0.type == .status }.count, 0)
        try channel.writeInbound(try headersOnly(id: 10))
        statuses = try written(channel).filter { $0.type == .status }
        XCTAssertEqual(statuses.map(\.callID), [10])
        let limitStatus = try CallStatus(buffer: statuses[0].payload)
        XCTAssertTrue(limitStatus.message.contains("too many concurrent calls"), "now the ordinary limit: \(limitStatus.message)")
    }

    func testAnIdleConnectionWithoutCredentialsIsClosedWithAReason() throws {
        let channel = try makeChannel(authenticate: { _ in .open }, untrusted: 10)
        try channel.writeInbound(ByteBuffer(bytes: Frame.preface))
        channel.embeddedEventLoop.advanceTime(by: .seconds(14))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.goAway])
        XCTAssertTrue(try GoAway(buffer: frames[0].payload).message.contains("idle"))
        XCTAssertFalse(channel.isActive)
    }

    func testConnectionsWithoutCredentialsPastTheServersLimitAreClosedAtOnce() throws {
        let count = UntrustedCount(limit: 1)
        func make() -> EmbeddedChannel {
            var logger = Logger(label: "test")
            logger.logLevel = .critical
            let channel = EmbeddedChannel(handler: ServerConnectionHandler(
                registry: ServiceRegistry(), limits: .init(maxFrameSize: 1 << 20, maxConcurrentCalls: 8, gracePeriod: .seconds(1)),
                transport: .tcp, authenticate: { _ in .open }, untrusted: count, logger: logger))
            _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            return channel
        }
        let first = make()
        XCTAssertEqual(try written(first).map(\.type), [])
        let second = make()
        XCTAssertEqual(try written(second).map(\.type), [.goAway], "refused at once")
        _ = try first.finish()
        let third = make()
        XCTAssertEqual(try written(third).map(\.type), [], "a closed connection gives its place back")
    }

    func testAConnectionMadeWhileTheServerDrainsIsToldSoAndClosed() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let handler = ServerConnectionHandler(
            registry: ServiceRegistry(), limits: .init(maxFrameSize: 1 << 20, maxConcurrentCalls: 8, gracePeriod: .seconds(1)),
            transport: .unix, authenticate: nil, logger: logger)
        handler.refuseAsShuttingDown()
        let channel = EmbeddedChannel(handler: handler)
        XCTAssertEqual(try written(channel).count, 0, "nothing before the connection is active")
        _ = try? channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.goAway])
        let goAway = try GoAway(buffer: frames[0].payload)
        XCTAssertEqual(goAway.code, RPCStatus.Code.unavailable.rawValue)
        XCTAssertTrue(goAway.message.contains("shutting down"), goAway.message)
        XCTAssertFalse(channel.isActive)
    }

    func testStatusesQuoteAtMostAFewKilobytesOfClientInput() throws {
        let channel = try makeChannel()
        try channel.writeInbound(ByteBuffer(bytes: Frame.preface))
        try channel.writeInbound(try headersOnly(id: 1, method: "/" + String(repeating: "x", count: 100_000)))
        let statuses = try written(channel).filter { $0.type == .status }
        let status = try CallStatus(buffer: statuses[0].payload)
        XCTAssertEqual(status.code, RPCStatus.Code.unimplemented.rawValue)
        XCTAssertLessThan(status.message.utf8.count, 400)
        XCTAssertTrue(status.message.contains("100001 bytes"), status.message)
        XCTAssertLessThanOrEqual(RPCStatus.capped(String(repeating: "é", count: 10_000)).utf8.count, RPCStatus.maxMessageBytes)
    }

    func testCallIdZeroIsExplained() throws {
        let channel = try makeChannel()
        try channel.writeInbound(ByteBuffer(bytes: Frame.preface))
        try channel.writeInbound(try headersOnly(id: 0))
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.goAway])
        XCTAssertTrue(try GoAway(buffer: frames[0].payload).message.contains("call ids start at 1"))
    }

    func testAnAnswerTooBigForAFrameEndsWithResourceExhaustedNotAnEmptyOK() throws {
        let channel = try makeChannel()
        try channel.writeInbound(try unaryCallBytes(id: 1, responseSize: 2 << 20))
        let frames = try written(channel)
        XCTAssertEqual(frames.map(\.type), [.status])
        let status = try CallStatus(buffer: frames[0].payload)
        XCTAssertEqual(status.code, RPCStatus.Code.resourceExhausted.rawValue)
        XCTAssertTrue(status.message.contains("exceeds the maximum frame size"), status.message)
    }

    func testAPeerThatTakesNothingIsNotReadFromAndIsClosedAfterTheStallTimeout() throws {
        let channel = try makeChannel()
        try channel.pipeline.syncOperations.addHandler(BackPressureHandler(), position: .first)
        try channel.writeInbound(ByteBuffer(bytes: Frame.preface))
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertTrue(channel.isActive)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: .seconds(29))
        XCTAssertTrue(channel.isActive, "it read again in time")
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: .seconds(31))
        XCTAssertFalse(channel.isActive)
    }
}
