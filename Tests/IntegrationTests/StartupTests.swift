import Foundation
import LiveRoomMessages
import LiveRoomRPC
import LiveRoomTesting
import XCTest

/// What the daemon does with a data directory or listeners it cannot fully use.
final class StartupTests: XCTestCase {
    private func run(_ tool: String, _ args: [String]) -> (Int32, String) {
        (try? DaemonProcess.runToExit(args, executable: tool)) ?? (-1, "\(tool) could not be started")
    }

    /// A data directory on read-only media: rooms are served, writes are refused with a reason.
    func testAReadOnlyDataDirectoryServesReads() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("ro-\(UUID().uuidString.prefix(8))")
        let d = try await DaemonProcess(directory: dir)
        let client = try await d.connect(.unix)
        var create = CreateRoomRequest()
        create.kind = .live
        create.platformId = "self"
        create.title = "Kept"
        let room = try await client.unary(RoomService.createRoom, create).room!
        await client.close()
        try await d.stop()

        let data = dir.appendingPathComponent("data").path
        let (mounted, why) = run("/bin/mount", ["--bind", data, data])
        guard mounted == 0 else { throw XCTSkip("cannot make a read-only mount here: \(why)") }
        defer { _ = run("/bin/umount", [data]) }
        let (remounted, why2) = run("/bin/mount", ["-o", "remount,bind,ro", data])
        guard remounted == 0 else { throw XCTSkip("cannot make a read-only mount here: \(why2)") }

        let readOnly = try await DaemonProcess(directory: dir)
        let reader = try await readOnly.connect(.unix)
        var get = GetRoomRequest()
        get.roomId = room.roomId
        let found = try await reader.unary(RoomService.getRoom, get).room
        XCTAssertEqual(found?.title, "Kept")
        XCTAssertEqual(found?.streamKey, room.streamKey)
        create.title = "New"
        do {
            _ = try await reader.unary(RoomService.createRoom, create)
            XCTFail("a write on a read-only store succeeded")
        } catch let status as RPCStatus {
            XCTAssertEqual(status.code, .unavailable)
            XCTAssertTrue(status.message.contains("cannot be written"), status.message)
        }
        await reader.close()
        try await readOnly.stop()
    }

    /// A listener that cannot bind stops the start, and the Unix socket already bound is removed.
    func testAFailedListenerLeavesNoSocketFileBehind() async throws {
        let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("bind-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let first = try await DaemonProcess(directory: dir.appendingPathComponent("a"))
        defer { Task { try? await first.stop() } }
        // The first daemon's RTMP port is taken: the second cannot listen there.
        let log = first.log_()
        let line = try XCTUnwrap(log.split(separator: "\n").first { $0.contains("RTMP listening") })
        let rtmpPort = try XCTUnwrap(line.range(of: #"127\.0\.0\.1:\d+"#, options: .regularExpression).map {
            String(line[$0].split(separator: ":")[1])
        })
        let socket = dir.appendingPathComponent("b.sock").path
        let (status, output) = run(DaemonProcess.binDirectory.appendingPathComponent("liveroomd").path, [
            "--socket", socket, "--data-dir", dir.appendingPathComponent("b-data").path, "--rtmp", "127.0.0.1:\(rtmpPort)",
        ])
        XCTAssertNotEqual(status, 0)
        XCTAssertTrue(output.contains("cannot listen for RTMP"), output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: socket), "the socket file is removed")
    }
}
