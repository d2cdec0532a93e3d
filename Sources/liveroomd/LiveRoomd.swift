import ArgumentParser
import Foundation
import LiveRoomService
import Logging
import NIOCore
import NIOPosix

/// liveroomd: the LiveRoom daemon.
@main
struct LiveRoomd: AsyncParsableCommand {
    /// Runs Swift concurrency on NIO's event loops, so handler tasks and I/O share threads
    /// instead of hopping between two pools on every call.
    static func main() async {
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "liveroomd",
        abstract: "The LiveRoom daemon: rooms on many live platforms, media fan-out and audience statistics.")

    @Option(help: "Unix socket to serve on (mode 0660). Default ./liveroomd.sock.")
    var socket: String?

    @Option(help: "Also serve on TCP at HOST:PORT (calls need the tcp_token).")
    var tcp: String?

    @Option(help: "RTMP listener for encoders (OBS, ffmpeg) at HOST:PORT, or \"off\". Default 127.0.0.1:1935.")
    var rtmp: String?

    @Option(help: "HTTP listener for players (HTTP-FLV, MP4, LL-HLS, the web player) at HOST:PORT, or \"off\". Default 127.0.0.1:8080.")
    var http: String?

    @Option(help: "Serve Prometheus metrics over HTTP at HOST:PORT (GET /metrics). Off by default.")
    var metrics: String?

    @Option(name: .customLong("data-dir"), help: "Where the daemon keeps its data. Default ./data.")
    var dataDir: String?

    @Option(help: "Configuration file (key = value lines; see README.md).")
    var config: String?

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String?

    @Option(name: .customLong("tcp-token"), help: "Token for calls over TCP (or LIVEROOM_TCP_TOKEN).")
    var tcpToken: String?

    @Flag(name: .customLong("check-config"), help: "Check the configuration (file and flags), print it is valid, and exit.")
    var checkConfig = false

    @Flag(name: .customLong("enable-test-service"), help: .hidden)
    var enableTestService = false

    /// A listener address from a flag: `HOST:PORT`, or `off` (nil) where that is allowed.
    static func listener(_ value: String, flag: String, offAllowed: Bool = true) throws -> String? {
        do { return try DaemonConfiguration.listener(value, offAllowed: offAllowed) } catch {
            throw ValidationError("--\(flag): \(error)")
        }
    }

    func run() async throws {
        var settings = DaemonConfiguration()
        do {
            if let config { try settings.load(file: config) }
        } catch {
            throw ValidationError("\(error)")
        }
        if let socket { settings.socketPath = socket }
        if let metrics { settings.metrics = try Self.listener(metrics, flag: "metrics") }
        if let rtmp { settings.rtmp = try Self.listener(rtmp, flag: "rtmp") }
        if let http { settings.http = try Self.listener(http, flag: "http") }
        if let tcp { settings.tcp = try Self.listener(tcp, flag: "tcp", offAllowed: false) }
        if let dataDir { settings.dataDir = dataDir }
        if let token = tcpToken ?? ProcessInfo.processInfo.environment["LIVEROOM_TCP_TOKEN"] { settings.tcpToken = token }
        if let logLevel {
            guard let level = Logger.Level(rawValue: logLevel) else { throw ValidationError("--log-level: unknown level \"\(logLevel)\"") }
            settings.logLevel = level
        }
        settings.enableTestService = enableTestService
        if let token = settings.tcpToken, token.count < 16 { throw ValidationError("the TCP token must be at least 16 characters") }
        let problems = await settings.checkEnvironment()
        if !problems.isEmpty {
            throw ValidationError("configuration \(config ?? "(defaults)"):\n  " + problems.joined(separator: "\n  "))
        }
        if checkConfig {
            print("liveroomd: configuration \(config ?? "(defaults)") is valid: \(settings.platforms.count) external platform(s)")
            return
        }
        let level = settings.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "liveroomd")
        let daemon: Daemon
        do {
            daemon = try Daemon(configuration: settings, logger: logger)
        } catch {
            FileHandle.standardError.write(Data("liveroomd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        do {
            // Bound here so that a listener that cannot be had ends the program with a clear
            // message; "ready" is logged by the daemon once its signal handlers are in place.
            try await daemon.start()
        } catch {
            FileHandle.standardError.write(Data("liveroomd: \(error)\n".utf8))
            throw ExitCode(1)
        }
        try await daemon.runUntilSignalled()
    }
}

