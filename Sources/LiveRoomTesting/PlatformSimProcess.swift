import Foundation
import LiveRoomRPC

/// A real liveroom-platform-sim process, for integration tests.
public final class PlatformSimProcess: @unchecked Sendable {
    public let name: String
    public let socketPath: String
    public let stateFile: String
    public let token: String
    private let process = Process()

    public init(name: String, directory: URL, extra: [String] = []) async throws {
        self.name = name
        socketPath = directory.appendingPathComponent("\(name).sock").path
        stateFile = directory.appendingPathComponent("\(name).json").path
        token = "\(name)-connector-token"
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        process.executableURL = DaemonProcess.binDirectory.appendingPathComponent("liveroom-platform-sim")
        process.arguments = ["--socket", socketPath, "--name", name, "--token", token, "--state-file", stateFile] + extra
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        for _ in 0..<400 {
            if FileManager.default.fileExists(atPath: stateFile) && FileManager.default.fileExists(atPath: socketPath) { return }
            if !process.isRunning { throw RPCStatus(.unavailable, "liveroom-platform-sim \(name) exited at start") }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw RPCStatus(.deadlineExceeded, "liveroom-platform-sim \(name) did not start")
    }

    /// The config section that makes the daemon use this platform.
    public func configSection(timeoutMs: Int = 2000, supports: String = "live,meeting") -> String {
        """
        [platform.\(name)]
        name = "\(name) (simulated)"
        connector = "unix:\(socketPath)"
        token = "\(token)"
        timeout_ms = \(timeoutMs)
        supports = "\(supports)"

        """
    }

    /// The platform's rooms as it reports them: (id, request id, closed).
    public func rooms() throws -> [(id: String, requestId: String, closed: Bool, key: String)] {
        let data = try Data(contentsOf: URL(fileURLWithPath: stateFile))
        let list = try JSONSerialization.jsonObject(with: data) as? [[String: Any]] ?? []
        return list.map { ($0["id"] as? String ?? "", $0["requestId"] as? String ?? "", $0["closed"] as? Bool ?? false, $0["key"] as? String ?? "") }
    }

    public func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}
