import Foundation
import LiveRoomTesting
import XCTest

/// The debug client, run as a person would run it.
final class CtlTests: XCTestCase {
    func ctl(_ args: [String], stdin: String? = nil) throws -> CtlRun { try runCtl(args, stdin: stdin) }

    func testHealthCallAndErrors() async throws {
        let daemon = try await DaemonProcess()
        let sock = ["--socket", daemon.socketPath]

        let health = try ctl(["health"] + sock)
        XCTAssertEqual(health.status, 0, health.stderr)
        XCTAssertEqual(health.stdout, "SERVING\n")

        let tcpHealth = try ctl(["health", "--tcp", "127.0.0.1:\(daemon.tcpPort)", "--json"])
        XCTAssertEqual(tcpHealth.stdout, "{\"status\":\"SERVING_STATUS_SERVING\"}\n")

        let unary = try ctl(["call", "--json"] + sock + ["liveroom.testing.v1.TestService/UnaryCall", #"{"response_size": 3}"#])
        XCTAssertEqual(unary.status, 0, unary.stderr)
        XCTAssertEqual(unary.stdout, "{\"payload\":\"AAAA\"}\n")

        let streamed = try ctl(["call", "--json"] + sock + ["liveroom.testing.v1.TestService.StreamingInputCall"],
                               stdin: "{\"payload\": \"AAAA\"}\n{\"payload\": \"AAAAAAAA\"}\n")
        XCTAssertEqual(streamed.stdout, "{\"aggregated_payload_size\":9}\n", streamed.stderr)

        let server = try ctl(["call", "--json"] + sock + ["liveroom.testing.v1.TestService/StreamingOutputCall",
                                                          #"{"response_parameters": [{"size": 1}, {"size": 2}]}"#])
        XCTAssertEqual(server.stdout, "{\"payload\":\"AA==\"}\n{\"payload\":\"AAA=\"}\n", server.stderr)

        let failing = try ctl(["call"] + sock + ["liveroom.testing.v1.TestService/UnaryCall",
                                                 #"{"response_status": {"code": 5, "message": "no such room"}}"#])
        XCTAssertNotEqual(failing.status, 0)
        XCTAssertEqual(failing.stderr, "liveroomctl: NOT_FOUND: no such room\n")

        let badJSON = try ctl(["call"] + sock + ["liveroom.testing.v1.TestService/UnaryCall", #"{"respons_size": 1}"#])
        XCTAssertNotEqual(badJSON.status, 0)
        XCTAssertTrue(badJSON.stderr.contains("has no field \"respons_size\""), badJSON.stderr)

        let noToken = try ctl(["call", "--tcp", "127.0.0.1:\(daemon.tcpPort)", "liveroom.testing.v1.TestService/EmptyCall", "{}"])
        XCTAssertTrue(noToken.stderr.hasPrefix("liveroomctl: UNAUTHENTICATED: "), noToken.stderr)

        let withToken = try ctl(["call", "--tcp", "127.0.0.1:\(daemon.tcpPort)", "--token", daemon.token, "liveroom.testing.v1.TestService/EmptyCall", "{}"])
        XCTAssertEqual(withToken.status, 0, withToken.stderr)

        try await daemon.stop()
        let down = try ctl(["health"] + sock)
        XCTAssertNotEqual(down.status, 0)
        XCTAssertEqual(down.stderr.split(separator: "\n").count, 1, "one line, no stack trace: \(down.stderr)")
        XCTAssertTrue(down.stderr.contains("UNAVAILABLE") && down.stderr.contains("is liveroomd running?"), down.stderr)
    }

    func testMethodsAndDescribe() throws {
        let methods = try ctl(["methods"])
        XCTAssertTrue(methods.stdout.contains("/liveroom.v1.RoomService/CreateRoom  (unary)  liveroom.v1.CreateRoomRequest -> liveroom.v1.CreateRoomResponse"))
        XCTAssertTrue(methods.stdout.contains("/liveroom.v1.MediaService/StreamData  (client-streaming)"))
        let describe = try ctl(["describe", "liveroom.v1.Room"])
        XCTAssertTrue(describe.stdout.contains("liveroom.v1.RoomStatus status = 10;"), describe.stdout)
        let unknown = try ctl(["describe", "Rom"])
        XCTAssertNotEqual(unknown.status, 0)
    }
}

/// The room commands of the debug client against a daemon with one simulated platform.
final class CtlRoomTests: XCTestCase {
    func testRoomCommands() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ctlrooms-\(UUID().uuidString.prefix(8))")
        let sim = try await PlatformSimProcess(name: "douyin", directory: dir)
        defer { sim.stop() }
        let config = dir.appendingPathComponent("d.conf")
        try sim.configSection().write(to: config, atomically: true, encoding: .utf8)
        let daemon = try await DaemonProcess(arguments: ["--config", config.path], directory: dir)
        let sock = ["--socket", daemon.socketPath]

        let platforms = try runCtl(["platforms"] + sock)
        XCTAssertTrue(platforms.stdout.hasPrefix("PLATFORM  NAME"), platforms.stdout)
        XCTAssertTrue(platforms.stdout.contains("douyin    douyin (simulated)"), platforms.stdout)

        let created = try runCtl(["create-room"] + sock + ["--platform", "douyin", "--title", "Spring sale", "--request-id", "r-1"])
        XCTAssertEqual(created.status, 0, created.stderr)
        // Relay ingest by default: the broadcaster publishes to us, and we to the platform.
        XCTAssertTrue(created.stdout.contains("push server  rtmp://127.0.0.1:\(daemon.rtmpPort)/live"), created.stdout)
        XCTAssertTrue(created.stdout.contains("ingest       relay"), created.stdout)
        let direct = try runCtl(["create-room"] + sock + ["--platform", "douyin", "--title", "Direct", "--ingest", "direct"])
        XCTAssertTrue(direct.stdout.contains("push server  rtmp://push.douyin.example/live"), direct.stdout)
        XCTAssertTrue(direct.stdout.contains("ingest       direct"), direct.stdout)
        let wrongIngest = try runCtl(["create-room"] + sock + ["--platform", "douyin", "--title", "x", "--ingest", "sideways"])
        XCTAssertNotEqual(wrongIngest.status, 0)
        XCTAssertTrue(created.stdout.contains("key status   valid"), created.stdout)

        let json = try runCtl(["create-room", "--json"] + sock + ["--platform", "douyin", "--title", "Spring sale", "--request-id", "r-1"])
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        XCTAssertEqual(object?["created"] as? Bool, false, "the same request id gives the same room")
        let room = try XCTUnwrap((object?["room"] as? [String: Any])?["room_id"] as? String)

        let list = try runCtl(["rooms"] + sock + ["--platform", "douyin"])
        XCTAssertTrue(list.stdout.hasPrefix("ROOM "), list.stdout)
        XCTAssertTrue(list.stdout.contains(room), list.stdout)
        XCTAssertEqual(list.stdout.split(separator: "\n").count, 3, "header and two rooms")

        let rotated = try runCtl(["rotate-key"] + sock + [room])
        XCTAssertEqual(rotated.status, 0, rotated.stderr)
        let closed = try runCtl(["close"] + sock + [room])
        XCTAssertTrue(closed.stdout.contains("status       ended"), closed.stdout)
        let missing = try runCtl(["room"] + sock + ["rm_missing"])
        XCTAssertEqual(missing.stderr, "liveroomctl: NOT_FOUND: no room rm_missing\n")
        try await daemon.stop()
    }
}

/// What one run of liveroomctl printed.
struct CtlRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the real liveroomctl binary.
func runCtl(_ args: [String], stdin: String? = nil) throws -> CtlRun {
    let p = Process()
    p.executableURL = DaemonProcess.binDirectory.appendingPathComponent("liveroomctl")
    p.arguments = args
    let out = Pipe(), err = Pipe(), input = Pipe()
    p.standardOutput = out
    p.standardError = err
    p.standardInput = input
    try p.run()
    if let stdin { input.fileHandleForWriting.write(Data(stdin.utf8)) }
    try input.fileHandleForWriting.close()
    let o = out.fileHandleForReading.readDataToEndOfFile()
    let e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return CtlRun(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
}
