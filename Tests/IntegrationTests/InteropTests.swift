import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// gRPC's interop cases against a real liveroomd, over its Unix socket and over TCP.
final class InteropTests: XCTestCase {
    private func onBothTransports(_ body: (RPCClient, Transport) async throws -> Void) async throws {
        let daemon = try await DaemonProcess()
        for transport in [Transport.unix, .tcp] {
            let client = try await daemon.connect(transport)
            do {
                try await body(client, transport)
            } catch {
                XCTFail("\(transport): \(error)\n\(daemon.log_().suffix(2000))")
            }
            await client.close()
        }
        try await daemon.stop()
    }

    private func zeros(_ n: Int) -> ByteBuffer { ByteBuffer(repeating: 0, count: n) }

    private func params(_ sizes: [Int32]) -> [ResponseParameters] {
        sizes.map { var p = ResponseParameters(); p.size = $0; return p }
    }

    func testEmptyUnary() async throws {
        try await onBothTransports { client, _ in
            let r = try await client.unary(TestService.emptyCall, Empty())
            XCTAssertEqual(r, Empty())
        }
    }

    func testLargeUnary() async throws {
        try await onBothTransports { client, _ in
            var req = SimpleRequest()
            req.responseSize = 314_159
            req.payload = zeros(271_828)
            let r = try await client.unary(TestService.unaryCall, req)
            XCTAssertEqual(r.payload.readableBytes, 314_159)
            XCTAssertTrue(r.payload.readableBytesView.allSatisfy { $0 == 0 })
        }
    }

    func testClientStreaming() async throws {
        try await onBothTransports { client, _ in
            let call = try await client.streaming(TestService.streamingInputCall)
            for size in [27_182, 8, 1_828, 45_904] {
                var m = StreamingInputCallRequest()
                m.payload = zeros(size)
                try await call.send(m)
            }
            let got1 = try await call.finish().aggregatedPayloadSize
            XCTAssertEqual(got1, 74_922)
        }
    }

    func testServerStreaming() async throws {
        try await onBothTransports { client, _ in
            var req = StreamingOutputCallRequest()
            req.responseParameters = params([31_415, 9, 2_653, 58_979])
            let call = try await client.serverStreaming(TestService.streamingOutputCall, req)
            var sizes: [Int] = []
            for try await r in call.responses { sizes.append(r.payload.readableBytes) }
            XCTAssertEqual(sizes, [31_415, 9, 2_653, 58_979])
            let got2 = try await call.outcome.status.code
            XCTAssertEqual(got2, .ok)
        }
    }

    func testPingPong() async throws {
        try await onBothTransports { client, _ in
            let call = try await client.streaming(TestService.fullDuplexCall)
            var responses = call.responses.makeAsyncIterator()
            for (request, response) in zip([27_182, 8, 1_828, 45_904], [31_415, 9, 2_653, 58_979]) {
                var m = StreamingOutputCallRequest()
                m.responseParameters = params([Int32(response)])
                m.payload = zeros(request)
                try await call.send(m)
                let r = try await responses.next()
                XCTAssertEqual(r?.payload.readableBytes, response)
            }
            call.halfClose()
            let got3 = try await responses.next()
            XCTAssertNil(got3)
            let got4 = try await call.outcome.status.code
            XCTAssertEqual(got4, .ok)
        }
    }

    func testEmptyStream() async throws {
        try await onBothTransports { client, _ in
            let call = try await client.streaming(TestService.fullDuplexCall)
            call.halfClose()
            var count = 0
            for try await _ in call.responses { count += 1 }
            XCTAssertEqual(count, 0)
            let got5 = try await call.outcome.status.code
            XCTAssertEqual(got5, .ok)
        }
    }

    func testCustomMetadata() async throws {
        try await onBothTransports { client, _ in
            let md: Metadata = ["x-grpc-test-echo-initial": "test_initial_metadata_value",
                                "x-grpc-test-echo-trailing-bin": "ababab"]
            var req = SimpleRequest()
            req.responseSize = 314_159
            req.payload = zeros(271_828)
            let (_, outcome) = try await client.unaryWithOutcome(TestService.unaryCall, req, metadata: md)
            XCTAssertEqual(outcome.initialMetadata["x-grpc-test-echo-initial"], "test_initial_metadata_value")
            XCTAssertEqual(outcome.trailers["x-grpc-test-echo-trailing-bin"], "ababab")

            let call = try await client.streaming(TestService.fullDuplexCall, metadata: md)
            var m = StreamingOutputCallRequest()
            m.responseParameters = params([314_159])
            m.payload = zeros(271_828)
            try await call.send(m)
            call.halfClose()
            for try await _ in call.responses {}
            let streamed = try await call.outcome
            XCTAssertEqual(streamed.initialMetadata["x-grpc-test-echo-initial"], "test_initial_metadata_value")
            XCTAssertEqual(streamed.trailers["x-grpc-test-echo-trailing-bin"], "ababab")
        }
    }

    func testStatusCodeAndMessage() async throws {
        try await onBothTransports { client, _ in
            var req = SimpleRequest()
            var s = EchoStatus()
            s.code = 2
            s.message = "test status message"
            req.responseStatus = s
            do {
                _ = try await client.unary(TestService.unaryCall, req)
                XCTFail("expected an error")
            } catch let status as RPCStatus {
                XCTAssertEqual(status, RPCStatus(.unknown, "test status message"))
            }
            // And on a streaming call.
            let call = try await client.streaming(TestService.fullDuplexCall)
            var m = StreamingOutputCallRequest()
            m.responseStatus = s
            try await call.send(m)
            call.halfClose()
            do {
                for try await _ in call.responses {}
                XCTFail("expected an error")
            } catch let status as RPCStatus {
                XCTAssertEqual(status, RPCStatus(.unknown, "test status message"))
            }
        }
    }

    func testCancelAfterBegin() async throws {
        try await onBothTransports { client, _ in
            let call = try await client.streaming(TestService.streamingInputCall)
            call.cancel()
            let got6 = try await call.outcome.status.code
            XCTAssertEqual(got6, .cancelled)
            // The connection is still good.
            _ = try await client.unary(TestService.emptyCall, Empty())
        }
    }

    func testCancelAfterFirstResponse() async throws {
        try await onBothTransports { client, _ in
            let call = try await client.streaming(TestService.fullDuplexCall)
            var m = StreamingOutputCallRequest()
            m.responseParameters = params([31_415])
            m.payload = zeros(27_182)
            try await call.send(m)
            var it = call.responses.makeAsyncIterator()
            let got7 = try await it.next()?.payload.readableBytes
            XCTAssertEqual(got7, 31_415)
            call.cancel()
            let got8 = try await call.outcome.status.code
            XCTAssertEqual(got8, .cancelled)
            do {
                while try await it.next() != nil {}
                XCTFail("the response stream should end with CANCELLED")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .cancelled)
            }
        }
    }

    func testTimeoutOnSleepingServer() async throws {
        try await onBothTransports { client, _ in
            var req = SimpleRequest()
            req.sleepMs = 10_000
            let start = ContinuousClock.now
            do {
                _ = try await client.unary(TestService.unaryCall, req, timeout: .milliseconds(200))
                XCTFail("expected DEADLINE_EXCEEDED")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .deadlineExceeded)
            }
            XCTAssertLessThan(ContinuousClock.now - start, .seconds(5))
            // A bidi call that waits on the server past its deadline.
            let call = try await client.streaming(TestService.fullDuplexCall, timeout: .milliseconds(100))
            var m = StreamingOutputCallRequest()
            var p = ResponseParameters()
            p.size = 1
            p.intervalMs = 10_000
            m.responseParameters = [p]
            try await call.send(m)
            let got9 = try await call.outcome.status.code
            XCTAssertEqual(got9, .deadlineExceeded)
        }
    }

    func testManyCallsAtOnceOnOneConnection() async throws {
        try await onBothTransports { client, _ in
            try await withThrowingTaskGroup(of: Int.self) { group in
                for i in 0..<200 {
                    group.addTask {
                        var req = SimpleRequest()
                        req.responseSize = Int32(i)
                        return try await client.unary(TestService.unaryCall, req).payload.readableBytes
                    }
                }
                var sizes: [Int] = []
                for try await s in group { sizes.append(s) }
                XCTAssertEqual(sizes.sorted(), Array(0..<200))
            }
        }
    }

    func testHealthOnBothTransports() async throws {
        try await onBothTransports { client, _ in
            let r = try await client.unary(Health.check, HealthCheckRequest())
            XCTAssertEqual(r.status, .serving)
            var unknown = HealthCheckRequest()
            unknown.service = "no.such.Service"
            do {
                _ = try await client.unary(Health.check, unknown)
                XCTFail("expected NOT_FOUND")
            } catch let status as RPCStatus {
                XCTAssertEqual(status.code, .notFound)
            }
        }
    }
}
