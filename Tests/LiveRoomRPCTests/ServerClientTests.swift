import Foundation
import LiveRoomMessages
import Logging
import NIOConcurrencyHelpers
import NIOCore
import XCTest

@testable import LiveRoomRPC

/// The RPC server and client together, in process, on a temporary Unix socket.
final class ServerClientTests: XCTestCase {
    private func withServer(
        configure: (inout ServerConfiguration) -> Void = { _ in },
        _ register: (inout ServiceRegistry) -> Void,
        _ body: (RPCClient) async throws -> Void
    ) async throws {
        let path = NSTemporaryDirectory() + "rpc-\(UUID().uuidString.prefix(8)).sock"
        var configuration = ServerConfiguration(listen: [.unix(path: path)])
        configure(&configuration)
        var registry = ServiceRegistry()
        register(&registry)
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let server = RPCServer(configuration: configuration, registry: registry, logger: logger)
        try await server.start()
        let client = try await RPCClient.connect(to: .unix(path: path))
        do {
            try await body(client)
        } catch {
            await client.close()
            await server.shutdown()
            throw error
        }
        await client.close()
        await server.shutdown()
    }

    /// Records what a handler saw, across tasks.
    final class Probe: Sendable {
        let cancelled = NIOLockedValueBox(false)
        let sentBytes = NIOLockedValueBox(0)
        let started = NIOLockedValueBox(false)
    }

    private func waitFor(_ what: String, timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws {
        let start = ContinuousClock.now
        while !condition() {
            if ContinuousClock.now - start > timeout { XCTFail("timed out waiting for \(what)"); return }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    private func sleepingHandler(_ probe: Probe) -> @Sendable (Empty, CallContext) async throws -> Empty {
        { _, _ in
            probe.started.withLockedValue { $0 = true }
            do {
                try await Task.sleep(for: .seconds(60))
            } catch {
                probe.cancelled.withLockedValue { $0 = true }
                throw error
            }
            return Empty()
        }
    }

    func testClientCancellationReachesTheHandlerTask() async throws {
        let probe = Probe()
        try await withServer({ $0.unary(TestService.emptyCall, sleepingHandler(probe)) }) { client in
            let call = try await client.makeCall(path: TestService.emptyCall.info.path, request: try MessageCoding.encode(Empty()))
            try await waitFor("the handler to start") { probe.started.withLockedValue { $0 } }
            call.cancel()
            try await waitFor("the handler to see cancellation") { probe.cancelled.withLockedValue { $0 } }
            let outcome = try await call.outcome
            XCTAssertEqual(outcome.status.code, .cancelled)
        }
    }

    func testDeadlineCancelsTheHandlerTask() async throws {
        let probe = Probe()
        try await withServer({ $0.unary(TestService.emptyCall, sleepingHandler(probe)) }) { client in
            do {
                _ = try await client.unary(TestService.emptyCall, Empty(), timeout: .milliseconds(100))
                XCTFail("expected DEADLINE_EXCEEDED")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .deadlineExceeded)
            }
            try await waitFor("the handler to see cancellation") { probe.cancelled.withLockedValue { $0 } }
        }
    }

    /// A handler that detaches its call after one message and returns; the test ends the call.
    private func detachingHandler(_ ended: NIOLockedValueBox<RPCStatus?>, _ writer: NIOLockedValueBox<PushWriter?>)
        -> @Sendable (StreamingOutputCallRequest, ResponseSender<StreamingOutputCallResponse>, CallContext) async throws -> Void
    {
        { _, sender, _ in
            let push = sender.push
            var r = StreamingOutputCallResponse()
            r.payload = ByteBuffer(repeating: 1, count: 10)
            let first = try MessageCoding.encode(r)
            try await push.eventLoop.submit {
                push.detach { status in ended.withLockedValue { $0 = status } }
                XCTAssertEqual(push.write(first), .written)
                push.flush()
            }.get()
            writer.withLockedValue { $0 = push }
        }
    }

    func testDetachedCallOutlivesItsHandlerAndEndsWithTheStatusGiven() async throws {
        let ended = NIOLockedValueBox<RPCStatus?>(nil)
        let writer = NIOLockedValueBox<PushWriter?>(nil)
        try await withServer({ $0.serverStreaming(TestService.streamingOutputCall, detachingHandler(ended, writer)) }) { client in
            let call = try await client.serverStreaming(TestService.streamingOutputCall, StreamingOutputCallRequest())
            var it = call.responses.makeAsyncIterator()
            let first = try await it.next()
            XCTAssertEqual(first?.payload.readableBytes, 10)
            try await waitFor("the handler to return") { writer.withLockedValue { $0 != nil } }
            let push = try XCTUnwrap(writer.withLockedValue { $0 })
            var r = StreamingOutputCallResponse()
            r.payload = ByteBuffer(repeating: 2, count: 20)
            let second = try MessageCoding.encode(r)
            try await push.eventLoop.submit {
                XCTAssertEqual(push.write(second), .written, "the call is still open after its handler returned")
                push.flush()
                push.end(RPCStatus(.resourceExhausted, "enough for now"))
                XCTAssertEqual(push.write(second), .ended)
            }.get()
            let next = try await it.next()
            XCTAssertEqual(next?.payload.readableBytes, 20)
            do {
                _ = try await it.next()
                XCTFail("expected the status given to end()")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .resourceExhausted)
                XCTAssertEqual(status.message, "enough for now")
            }
            XCTAssertNil(ended.withLockedValue { $0 }, "onEnd is only for calls ended otherwise")
        }
    }

    func testDetachedCallIsToldWhenThePeerCancelsOrGoesAway() async throws {
        let ended = NIOLockedValueBox<RPCStatus?>(nil)
        let writer = NIOLockedValueBox<PushWriter?>(nil)
        try await withServer({ $0.serverStreaming(TestService.streamingOutputCall, detachingHandler(ended, writer)) }) { client in
            let call = try await client.serverStreaming(TestService.streamingOutputCall, StreamingOutputCallRequest())
            try await waitFor("the handler to return") { writer.withLockedValue { $0 != nil } }
            call.cancel()
            try await waitFor("onEnd") { ended.withLockedValue { $0 } != nil }
            XCTAssertEqual(ended.withLockedValue { $0 }?.code, .cancelled)
            XCTAssertEqual(ended.withLockedValue { $0 }?.message, "cancelled by the client")

            ended.withLockedValue { $0 = nil }
            writer.withLockedValue { $0 = nil }
            _ = try await client.serverStreaming(TestService.streamingOutputCall, StreamingOutputCallRequest())
            try await waitFor("the handler to return") { writer.withLockedValue { $0 != nil } }
            await client.close()
            try await waitFor("onEnd") { ended.withLockedValue { $0 } != nil }
            XCTAssertEqual(ended.withLockedValue { $0 }?.message, "the client went away")
        }
    }

    func testSlowReaderBoundsWhatTheServerSends() async throws {
        let probe = Probe()
        let messageSize = 64 * 1024
        let count = 160  // 10 MiB in all
        try await withServer({ registry in
            registry.serverStreaming(TestService.streamingOutputCall) { _, sender, _ in
                for _ in 0..<count {
                    var r = StreamingOutputCallResponse()
                    r.payload = ByteBuffer(repeating: 1, count: messageSize)
                    try await sender.send(r)
                    probe.sentBytes.withLockedValue { $0 += messageSize }
                }
            }
        }) { client in
            let call = try await client.serverStreaming(TestService.streamingOutputCall, StreamingOutputCallRequest())
            try await Task.sleep(for: .milliseconds(500))
            let sent = probe.sentBytes.withLockedValue { $0 }
            XCTAssertGreaterThan(sent, 0)
            XCTAssertLessThanOrEqual(sent, Frame.initialWindow + messageSize, "the server must wait for credit")
            var received = 0
            for try await r in call.responses { received += r.payload.readableBytes }
            XCTAssertEqual(received, messageSize * count)
        }
    }

    func testClientSendsWaitForServerCredit() async throws {
        let probe = Probe()
        try await withServer({ registry in
            registry.clientStreaming(TestService.streamingInputCall) { requests, _ in
                try await Task.sleep(for: .seconds(60))  // never reads
                for try await _ in requests {}
                return StreamingInputCallResponse()
            }
        }) { client in
            let call = try await client.streaming(TestService.streamingInputCall)
            let sender = Task {
                for _ in 0..<100 {
                    var m = StreamingInputCallRequest()
                    m.payload = ByteBuffer(repeating: 2, count: 64 * 1024)
                    try await call.send(m)
                    probe.sentBytes.withLockedValue { $0 += 64 * 1024 }
                }
            }
            try await Task.sleep(for: .milliseconds(500))
            let sent = probe.sentBytes.withLockedValue { $0 }
            XCTAssertLessThanOrEqual(sent, Frame.initialWindow + 64 * 1024, "sends beyond the window must wait")
            call.cancel()
            _ = await sender.result
        }
    }

    func testConcurrencyLimitPerConnection() async throws {
        let probe = Probe()
        try await withServer(configure: { $0.maxConcurrentCallsPerConnection = 2 }, { $0.unary(TestService.emptyCall, sleepingHandler(probe)) }) { client in
            let request = try MessageCoding.encode(Empty())
            let a = try await client.makeCall(path: TestService.emptyCall.info.path, request: request)
            let b = try await client.makeCall(path: TestService.emptyCall.info.path, request: request)
            do {
                _ = try await client.unary(TestService.emptyCall, Empty())
                XCTFail("a third concurrent call must be refused")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .resourceExhausted)
                XCTAssertTrue(status.message.contains("limit 2"), status.message)
            }
            a.cancel()
            b.cancel()
        }
    }

    func testUnexpectedHandlerErrorIsUnknownWithItsDescription() async throws {
        struct Broken: Error, CustomStringConvertible { var description: String { "disk on fire" } }
        try await withServer({ $0.unary(TestService.emptyCall) { _, _ in throw Broken() } }) { client in
            do {
                _ = try await client.unary(TestService.emptyCall, Empty())
                XCTFail("expected an error")
            } catch let status as RPCStatus {
                XCTAssertEqual(status, RPCStatus(.unknown, "disk on fire"))
            }
        }
    }

    /// Calls made from an actor that runs on the connection's own event loop: the answer arrives
    /// on that loop and resumes the caller there, with no hop and no deadlock.
    actor OnConnectionLoop {
        let client: RPCClient
        init(client: RPCClient) { self.client = client }
        nonisolated var unownedExecutor: UnownedSerialExecutor { client.eventLoop.executor.asUnownedSerialExecutor() }

        func sizes(_ n: Int) async throws -> [Int] {
            var out: [Int] = []
            for i in 0..<n {
                var request = SimpleRequest()
                request.responseSize = Int32(i)
                XCTAssertTrue(client.eventLoop.inEventLoop)
                out.append(try await client.unary(TestService.unaryCall, request).payload.readableBytes)
            }
            return out
        }
    }

    func testUnaryCallsFromAnActorOnTheConnectionsEventLoop() async throws {
        try await withServer({ registry in
            registry.unary(TestService.unaryCall) { request, _ in
                var r = SimpleResponse()
                r.payload = ByteBuffer(repeating: 1, count: Int(request.responseSize))
                return r
            }
        }) { client in
            let sizes = try await OnConnectionLoop(client: client).sizes(200)
            XCTAssertEqual(sizes, Array(0..<200))
        }
    }

    /// A closed connection's handler must not outlive it (its context refers back to it), and a
    /// call made on a closed client fails at once with UNAVAILABLE instead of waiting.
    func testAClosedClientFailsCallsAndItsHandlerIsReleased() async throws {
        final class WeakHandler: @unchecked Sendable { weak var value: ClientConnectionHandler? }
        let weak = WeakHandler()
        try await withServer({ _ in }) { first in
            let client = try await RPCClient.connect(to: first.endpoint)
            try await client.eventLoop.submit { weak.value = client.connection.value }.get()
            _ = try await client.ping()
            await client.close()
            do {
                _ = try await client.ping()
                XCTFail("a ping on a closed client succeeded")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .unavailable)
            }
            XCTAssertNotNil(weak.value)
        }
        // The client is gone: so is its handler.
        XCTAssertNil(weak.value, "the client's connection handler outlived its connection")
    }

    func testPing() async throws {
        try await withServer({ _ in }) { client in
            let rtt = try await client.ping()
            XCTAssertLessThan(rtt, .seconds(5))
        }
    }

    func testMissingSocketIsExplained() async throws {
        do {
            _ = try await RPCClient.connect(to: .unix(path: "/nonexistent/liveroomd.sock"))
            XCTFail("expected UNAVAILABLE")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .unavailable)
            XCTAssertTrue(status.message.contains("is liveroomd running?"), status.message)
        }
    }

    func testMediaPayloadTravelsAsAnAttachmentAndComesBackIntact() async throws {
        let media = ByteBuffer(bytes: (0..<200_000).map { UInt8(truncatingIfNeeded: $0 * 7) })
        try await withServer({ registry in
            registry.clientStreaming(MediaService.streamData) { requests, _ in
                var bytes: UInt64 = 0
                for try await r in requests {
                    if case .chunk(let c)? = r.message {
                        XCTAssertEqual(c.payload, media)
                        bytes += UInt64(c.payload.readableBytes)
                    }
                }
                var s = StreamDataResponse()
                s.bytesReceived = bytes
                return s
            }
        }) { client in
            var chunk = MediaChunk()
            chunk.payload = media
            chunk.keyframe = true
            var req = StreamDataRequest()
            req.message = .chunk(chunk)
            let encoded = try MessageCoding.encode(req)
            XCTAssertEqual(encoded.attachment, media, "the payload rides beside the body")
            XCTAssertLessThan(encoded.body.readableBytes, 32, "and is not inside it")
            let call = try await client.streaming(MediaService.streamData)
            try await call.send(req)
            let summary = try await call.finish()
            XCTAssertEqual(summary.bytesReceived, UInt64(media.readableBytes))
        }
    }
}
