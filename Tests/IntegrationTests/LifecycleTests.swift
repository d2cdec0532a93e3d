import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import NIOCore
import XCTest

/// Start-up, socket handling and graceful shutdown of a real daemon.
final class LifecycleTests: XCTestCase {
    func testSocketFileModeIs0660() async throws {
        let daemon = try await DaemonProcess(tcp: false)
        let attributes = try FileManager.default.attributesOfItem(atPath: daemon.socketPath)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o660)
        try await daemon.stop()
        XCTAssertFalse(FileManager.default.fileExists(atPath: daemon.socketPath), "a clean stop removes the socket file")
    }

    func testStaleSocketIsReplacedAndALiveOneRefused() async throws {
        let first = try await DaemonProcess(tcp: false)
        // A second daemon on a live socket is refused with a clear message.
        do {
            _ = try await DaemonProcess(directory: first.directory, tcp: false)
            XCTFail("a second daemon must not take over a live socket")
        } catch {
            XCTAssertTrue("\(error)".contains("another server is already listening on"), "\(error)")
        }
        // kill -9 leaves the socket file behind; the next start replaces it.
        first.signal(SIGKILL)
        try await first.waitForExit()
        XCTAssertTrue(FileManager.default.fileExists(atPath: first.socketPath))
        let second = try await DaemonProcess(directory: first.directory, tcp: false)
        let client = try await second.connect(.unix)
        let r = try await client.unary(Health.check, HealthCheckRequest())
        XCTAssertEqual(r.status, .serving)
        await client.close()
        try await second.stop()
    }

    func testGracefulShutdownLetsCallsInFlightFinish() async throws {
        let daemon = try await DaemonProcess()
        let client = try await daemon.connect(.unix)
        var slow = SimpleRequest()
        slow.sleepMs = 800
        slow.responseSize = 3
        let inFlight = Task { try await client.unary(TestService.unaryCall, slow) }
        // Health.Watch sees NOT_SERVING when the drain begins.
        let watch = try await client.serverStreaming(Health.watch, HealthCheckRequest())
        var statuses = watch.responses.makeAsyncIterator()
        let first = try await statuses.next()
        XCTAssertEqual(first?.status, .serving)
        try await Task.sleep(for: .milliseconds(200))
        daemon.signal(SIGTERM)
        let second = try await statuses.next()
        XCTAssertEqual(second?.status, .notServing)
        // A connection made during the drain is told why it cannot be served.
        let late = try await RawConnection.connect(daemon.unixEndpoint)
        // Read only: the daemon may close before a preface could be written.
        let (received, closed) = try await late.exchange([])
        let frames = RawFrames.parse(received)
        XCTAssertEqual(frames.map(\.type), [FrameType.goAway.rawValue])
        let goAway = try GoAway(serializedBytes: frames.first?.payload ?? [])
        XCTAssertEqual(goAway.code, RPCStatus.Code.unavailable.rawValue)
        XCTAssertTrue(goAway.message.contains("shutting down"), goAway.message)
        XCTAssertTrue(closed)
        // The call in flight completes normally.
        let response = try await inFlight.value
        XCTAssertEqual(response.payload.readableBytes, 3)
        // New calls on the draining connection are refused.
        do {
            _ = try await client.unary(TestService.emptyCall, Empty())
            XCTFail("a new call after GOAWAY must fail")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .unavailable)
        }
        let code = try await daemon.waitForExit()
        XCTAssertEqual(code, 0)
        await client.close()
    }

    func testGracePeriodEndsCallsThatRunTooLong() async throws {
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("grace-\(UUID()).conf")
        try "grace_period_seconds = 1\n".write(to: config, atomically: true, encoding: .utf8)
        let daemon = try await DaemonProcess(arguments: ["--config", config.path])
        let client = try await daemon.connect(.unix)
        var slow = SimpleRequest()
        slow.sleepMs = 60_000
        let inFlight = Task { try await client.unary(TestService.unaryCall, slow) }
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        daemon.signal(SIGTERM)
        do {
            _ = try await inFlight.value
            XCTFail("the call should be ended by the grace period")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .unavailable)
        }
        let code = try await daemon.waitForExit()
        XCTAssertEqual(code, 0)
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
        await client.close()
    }

    /// `--check-config` finds what would fail at start, in plain words, and takes CRLF files.
    func testCheckConfigCatchesWhatWouldFailAtStart() throws {
        func check(_ text: String, _ extra: [String] = []) throws -> (Int32, String) {
            let config = FileManager.default.temporaryDirectory.appendingPathComponent("check-\(UUID()).conf")
            try text.write(to: config, atomically: true, encoding: .utf8)
            return try DaemonProcess.runToExit(["--config", config.path, "--check-config"] + extra)
        }
        var (status, text) = try check("log_level = info\r\nrtmp = 127.0.0.1:1935\r\n")
        XCTAssertEqual(status, 0, "CRLF lines are lines: \(text)")
        (status, text) = try check("rtmp = 192.0.2.77:1935\n")
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(text.contains("rtmp: cannot listen on 192.0.2.77"), text)
        (status, text) = try check("log_level = info\n\n[platform.x]\ntoken = \"abcdefabcdefabcdef\"\n")
        XCTAssertTrue(text.contains(":3: [platform.x] needs connector"), "the section's line: \(text)")
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("not-a-dir-\(UUID())")
        try Data().write(to: file)
        (status, text) = try check("", ["--socket", "", "--data-dir", file.path])
        XCTAssertTrue(text.contains("socket: the path is empty"), text)
        XCTAssertTrue(text.contains("is a file, not a directory"), text)
    }

    func testBadConfigStopsTheDaemonNamingTheLine() async throws {
        let config = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID()).conf")
        try "# ok\nsocket = \"/tmp/x.sock\"\nmax_frame_sise = 10\n".write(to: config, atomically: true, encoding: .utf8)
        do {
            _ = try await DaemonProcess(arguments: ["--config", config.path])
            XCTFail("a wrong option must stop the daemon")
        } catch {
            XCTAssertTrue("\(error)".contains("\(config.path):3: unknown option \"max_frame_sise\""), "\(error)")
        }
    }

    /// The repository's root, from this file's path.
    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func testEveryConfigOptionIsDocumentedAndTheSampleIsValid() throws {
        let source = try String(contentsOf: Self.repo.appendingPathComponent("Sources/LiveRoomService/DaemonConfiguration.swift"), encoding: .utf8)
        let doc = try String(contentsOf: Self.repo.appendingPathComponent("docs/CONFIG.md"), encoding: .utf8)
        let keys = source.matches(of: /case "([a-z_]+)"/).map { String($0.1) }.filter { $0 != "off" }
        XCTAssertGreaterThan(keys.count, 20, "the option names are read from the parser")
        for key in keys { XCTAssertTrue(doc.contains("`\(key)`"), "docs/CONFIG.md does not document \(key)") }

        let (status, text) = try DaemonProcess.runToExit(
            ["--config", Self.repo.appendingPathComponent("tools/deploy/liveroomd.conf").path, "--check-config"])
        XCTAssertEqual(status, 0, text)
        XCTAssertTrue(text.contains("is valid"), text)
    }
}
