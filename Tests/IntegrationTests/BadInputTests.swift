import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// Malformed input gets a clear status or a clean close, and the daemon keeps serving others.
final class BadInputTests: XCTestCase {
    private func assertStillServing(_ daemon: DaemonProcess, file: StaticString = #filePath, line: UInt = #line) async throws {
        let client = try await daemon.connect(.unix)
        let r = try await client.unary(Health.check, HealthCheckRequest())
        XCTAssertEqual(r.status, .serving, file: file, line: line)
        await client.close()
        XCTAssertTrue(daemon.isRunning, file: file, line: line)
    }

    private func status(_ frames: [(type: UInt8, callID: UInt32, payload: [UInt8])], call: UInt32) throws -> CallStatus? {
        guard let f = frames.first(where: { $0.type == FrameType.status.rawValue && $0.callID == call }) else { return nil }
        return try CallStatus(serializedBytes: f.payload)
    }

    private func header(_ method: String) throws -> [UInt8] {
        var h = CallHeader()
        h.method = method
        return try h.serializedBytes()
    }

    func testGarbageIsClosedWithAGoAwayThatSaysWhy() async throws {
        let daemon = try await DaemonProcess()
        for endpoint in [daemon.unixEndpoint, daemon.tcpEndpoint] {
            let raw = try await RawConnection.connect(endpoint)
            let (received, closed) = try await raw.exchange(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            XCTAssertTrue(closed, "the daemon closes a connection that does not speak the protocol")
            let frames = RawFrames.parse(received)
            let goAway = try XCTUnwrap(frames.first { $0.type == FrameType.goAway.rawValue })
            XCTAssertTrue(try GoAway(serializedBytes: goAway.payload).message.contains("bad connection preface"))
        }
        try await assertStillServing(daemon)
        try await daemon.stop()
    }

    func testFrameShorterThanItsHeaderClosesTheConnection() async throws {
        let daemon = try await DaemonProcess()
        let raw = try await RawConnection.connect(daemon.unixEndpoint)
        let (received, closed) = try await raw.exchange(Frame.preface + [0, 0, 0, 2, 1, 0])
        XCTAssertTrue(closed)
        let goAway = try XCTUnwrap(RawFrames.parse(received).first { $0.type == FrameType.goAway.rawValue })
        XCTAssertTrue(try GoAway(serializedBytes: goAway.payload).message.contains("shorter than the 6-byte frame header"))
        try await assertStillServing(daemon)
        try await daemon.stop()
    }

    func testPerCallErrorsKeepTheConnectionOpen() async throws {
        let daemon = try await DaemonProcess()
        let raw = try await RawConnection.connect(daemon.unixEndpoint)
        var bytes = Frame.preface
        // 1: a HEADERS payload that is not a CallHeader
        bytes += RawFrames.frame(1, flags: 1, callID: 1, payload: [0x0F])
        // 3: an unknown method
        bytes += RawFrames.frame(1, flags: 1, callID: 3, payload: try header("/liveroom.v1.Nope/Nothing"))
        // 5: a request that is not valid protobuf
        bytes += RawFrames.frame(1, callID: 5, payload: try header(TestService.unaryCall.info.path))
        bytes += RawFrames.frame(2, flags: 1, callID: 5, payload: [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F])
        // 7: a unary call half-closed with no request
        bytes += RawFrames.frame(1, flags: 1, callID: 7, payload: try header(TestService.emptyCall.info.path))
        // 9: an oversized MESSAGE (declared length only; the daemon must answer before it arrives)
        bytes += RawFrames.frame(1, callID: 9, payload: try header(TestService.streamingInputCall.info.path))
        bytes += RawFrames.frame(2, callID: 9, payload: [], declaredLength: 6 + 5 * 1024 * 1024)
        let (received, closed) = try await raw.exchange(bytes, timeout: .seconds(2))
        XCTAssertFalse(closed, "per-call errors must not close the connection")
        let frames = RawFrames.parse(received)
        XCTAssertEqual(frames.count, 5, "\(frames.map { ($0.type, $0.callID) }) \(received.count) bytes\n\(daemon.log_().suffix(3000))")
        XCTAssertEqual(try status(frames, call: 1)?.code, RPCStatus.Code.invalidArgument.rawValue)
        let unknown = try XCTUnwrap(status(frames, call: 3))
        XCTAssertEqual(unknown.code, RPCStatus.Code.unimplemented.rawValue)
        XCTAssertTrue(unknown.message.contains("/liveroom.v1.Nope/Nothing"))
        let bad = try XCTUnwrap(status(frames, call: 5))
        XCTAssertEqual(bad.code, RPCStatus.Code.invalidArgument.rawValue)
        XCTAssertTrue(bad.message.contains("liveroom.testing.v1.SimpleRequest"), bad.message)
        XCTAssertEqual(try status(frames, call: 7)?.code, RPCStatus.Code.invalidArgument.rawValue)
        let big = try XCTUnwrap(status(frames, call: 9))
        XCTAssertEqual(big.code, RPCStatus.Code.resourceExhausted.rawValue)
        XCTAssertTrue(big.message.contains("exceeds the maximum frame size of 4194304 bytes"), big.message)
        try await assertStillServing(daemon)
        try await daemon.stop()
    }

    func testOversizedRequestFromTheRealClient() async throws {
        let daemon = try await DaemonProcess()
        var configuration = ClientConfiguration()
        configuration.maxFrameSize = 8 * 1024 * 1024  // let the client send what the server refuses
        let client = try await RPCClient.connect(to: daemon.unixEndpoint, configuration: configuration)
        var req = SimpleRequest()
        req.payload = ByteBuffer(repeating: 1, count: 5 * 1024 * 1024)
        do {
            _ = try await client.unary(TestService.unaryCall, req)
            XCTFail("expected RESOURCE_EXHAUSTED")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .resourceExhausted)
        }
        // The same connection goes on working.
        let r = try await client.unary(TestService.emptyCall, Empty())
        XCTAssertEqual(r, Empty())
        await client.close()
        try await daemon.stop()
    }

    func testCallIDsMustIncrease() async throws {
        let daemon = try await DaemonProcess()
        let raw = try await RawConnection.connect(daemon.unixEndpoint)
        var bytes = Frame.preface
        bytes += RawFrames.frame(1, flags: 1, callID: 5, payload: try header(TestService.emptyCall.info.path))
        bytes += RawFrames.frame(1, flags: 1, callID: 3, payload: try header(TestService.emptyCall.info.path))
        let (received, closed) = try await raw.exchange(bytes)
        XCTAssertTrue(closed)
        XCTAssertTrue(RawFrames.parse(received).contains { $0.type == FrameType.goAway.rawValue })
        try await assertStillServing(daemon)
        try await daemon.stop()
    }

    func testTCPNeedsTheToken() async throws {
        let daemon = try await DaemonProcess()
        let anonymous = try await daemon.connect(.tcp, withToken: false)
        do {
            _ = try await anonymous.unary(TestService.emptyCall, Empty())
            XCTFail("expected UNAUTHENTICATED")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .unauthenticated)
            XCTAssertTrue(status.message.contains("authorization"), status.message)
        }
        // Health stays open for probes.
        let health = try await anonymous.unary(Health.check, HealthCheckRequest())
        XCTAssertEqual(health.status, .serving)
        do {
            _ = try await anonymous.unary(TestService.emptyCall, Empty(), metadata: ["authorization": "Bearer wrong-token"])
            XCTFail("expected UNAUTHENTICATED")
        } catch let status as RPCStatus {
            XCTAssertEqual(status, RPCStatus(.unauthenticated, "the authorization token is not valid"))
        }
        await anonymous.close()
        // The Unix socket needs no token.
        let local = try await RPCClient.connect(to: daemon.unixEndpoint)
        let r = try await local.unary(TestService.emptyCall, Empty())
        XCTAssertEqual(r, Empty())
        await local.close()
        try await daemon.stop()
    }

    func testVanishedPeerCancelsItsCalls() async throws {
        let daemon = try await DaemonProcess()
        let client = try await daemon.connect(.unix)
        var req = SimpleRequest()
        req.sleepMs = 60_000
        let pending = Task { try await client.unary(TestService.unaryCall, req) }
        try await Task.sleep(for: .milliseconds(200))
        await client.close()
        _ = await pending.result
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertTrue(daemon.log_().contains("the client went away; cancelling 1 call(s) in flight"), daemon.log_())
        try await assertStillServing(daemon)
        try await daemon.stop()
    }
}

/// The byte-level example in docs/PROTOCOL.md, section 9, against a real daemon.
final class ProtocolDocExampleTests: XCTestCase {
    func testWorkedExampleBytes() async throws {
        let daemon = try await DaemonProcess(tcp: false)
        let raw = try await RawConnection.connect(daemon.unixEndpoint)
        var bytes: [UInt8] = [0x4C, 0x52, 0x50, 0x43, 0x2F, 0x31, 0x0D, 0x0A]
        bytes += [0x00, 0x00, 0x00, 0x21, 0x01, 0x00, 0x00, 0x00, 0x00, 0x01, 0x0A, 0x19] + Array("/liveroom.v1.Health/Check".utf8)
        bytes += [0x00, 0x00, 0x00, 0x06, 0x02, 0x01, 0x00, 0x00, 0x00, 0x01]
        let (received, _) = try await raw.exchange(bytes, timeout: .seconds(1))
        XCTAssertEqual(received, [
            0x00, 0x00, 0x00, 0x08, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x01,
            0x00, 0x00, 0x00, 0x06, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01,
        ])
        try await daemon.stop()
    }
}
