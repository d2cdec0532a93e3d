import Foundation
import LiveRoomClient
import LiveRoomRPC

/// A real liveroomd process on a temporary Unix socket and a TCP port, for integration tests.
public final class DaemonProcess: @unchecked Sendable {
    public let directory: URL
    public let socketPath: String
    public let token = "integration-test-token-0123456789"
    public private(set) var tcpPort = 0
    /// The RTMP listener's port (0 if the daemon runs without one).
    public private(set) var rtmpPort = 0
    /// The metrics listener's port, when started with `--metrics 127.0.0.1:0`.
    public private(set) var metricsPort = 0
    /// The HTTP listener's port (players), 0 if the daemon runs without one.
    public private(set) var httpPort = 0
    private let process = Process()
    private let logURL: URL

    /// The build folder holding liveroomd and liveroomctl (next to the test bundle).
    public static var binDirectory: URL {
        if let dir = ProcessInfo.processInfo.environment["LIVEROOM_BIN_DIR"] { return URL(fileURLWithPath: dir) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    }

    /// Starts liveroomd and waits until it reports its listeners.
    public init(arguments extra: [String] = [], directory: URL? = nil, tcp: Bool = true) async throws {
        let dir = directory ?? URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("lr-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        self.directory = dir
        socketPath = dir.appendingPathComponent("d.sock").path
        logURL = dir.appendingPathComponent("daemon-\(UUID().uuidString.prefix(4)).log")
        _ = FileManager.default.createFile(atPath: logURL.path, contents: nil)
        process.executableURL = Self.binDirectory.appendingPathComponent("liveroomd")
        var args = ["--socket", socketPath, "--data-dir", dir.appendingPathComponent("data").path,
                    "--tcp-token", token, "--enable-test-service", "--log-level", "debug"]
        if tcp { args += ["--tcp", "127.0.0.1:0"] }
        if !extra.contains("--rtmp") { args += ["--rtmp", "127.0.0.1:0"] }
        if !extra.contains("--http") { args += ["--http", "127.0.0.1:0"] }
        process.arguments = args + extra
        let log = try FileHandle(forWritingTo: logURL)
        process.standardError = log
        process.standardOutput = log
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            let text = log_()
            if let line = text.split(separator: "\n").first(where: { $0.contains("liveroomd ready") }) {
                if tcp, let r = line.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                    tcpPort = Int(line[r].split(separator: ":").last!)!
                }
                if let rtmpLine = text.split(separator: "\n").first(where: { $0.contains("RTMP listening") }),
                    let r = rtmpLine.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
                {
                    rtmpPort = Int(rtmpLine[r].split(separator: ":").last!)!
                }
                if let httpLine = text.split(separator: "\n").first(where: { $0.contains("HTTP listening") }),
                    let r = httpLine.range(of: #"HTTP listening 127\.0\.0\.1:(\d+)"#, options: .regularExpression)
                {
                    httpPort = Int(httpLine[r].split(separator: ":").last!)!
                }
                if let metricsLine = text.split(separator: "\n").first(where: { $0.contains("metrics listening") }),
                    let r = metricsLine.range(of: #"127\.0\.0\.1:(\d+)"#, options: .regularExpression)
                {
                    metricsPort = Int(metricsLine[r].split(separator: ":").last!)!
                }
                return
            }
            if !process.isRunning { throw RPCStatus(.unavailable, "liveroomd exited at start:\n\(text)") }
            try await Task.sleep(for: .milliseconds(20))
        }
        process.terminate()
        throw RPCStatus(.deadlineExceeded, "liveroomd did not become ready:\n\(log_())")
    }

    /// Everything the daemon has logged so far.
    public func log_() -> String { (try? String(contentsOf: logURL, encoding: .utf8)) ?? "" }

    /// Runs a program (by default liveroomd, with `--check-config` and the like) to its end:
    /// its exit status and everything it printed, standard output and error together.
    public static func runToExit(_ arguments: [String], executable: String? = nil) throws -> (status: Int32, output: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable ?? binDirectory.appendingPathComponent("liveroomd").path)
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return (p.terminationStatus, text)
    }

    public var unixEndpoint: Endpoint { .unix(path: socketPath) }
    public var tcpEndpoint: Endpoint { .tcp(host: "127.0.0.1", port: tcpPort) }

    /// A client on the chosen transport; TCP clients carry the token.
    public func connect(_ transport: Transport, withToken: Bool = true) async throws -> RPCClient {
        var configuration = ClientConfiguration()
        if transport == .tcp && withToken { configuration.defaultMetadata.add("authorization", "Bearer \(token)") }
        return try await RPCClient.connect(to: transport == .unix ? unixEndpoint : tcpEndpoint, configuration: configuration)
    }

    public var isRunning: Bool { process.isRunning }
    public var pid: Int32 { process.processIdentifier }

    public func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// Waits for the process to exit; returns its exit status.
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(30)) async throws -> Int32 {
        let start = ContinuousClock.now
        while process.isRunning {
            if ContinuousClock.now - start > timeout { throw RPCStatus(.deadlineExceeded, "liveroomd did not exit") }
            try await Task.sleep(for: .milliseconds(20))
        }
        return process.terminationStatus
    }

    /// SIGTERM and wait.
    public func stop() async throws {
        guard process.isRunning else { return }
        signal(SIGTERM)
        try await waitForExit()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}
