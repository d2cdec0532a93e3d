import Foundation
import LiveRoomRPC

/// A real nginx with the RTMP module (Debian: nginx, libnginx-mod-rtmp) in a folder of its own
/// on a free loopback port: a platform's ingest and playback in tests, the walk-through and the
/// benchmarks. Never the system's nginx.
public final class NginxRTMP: @unchecked Sendable {
    public static let module = "/usr/lib/nginx/modules/ngx_rtmp_module.so"
    public static let binary = "/usr/sbin/nginx"

    /// Whether nginx and its RTMP module are installed.
    public static var isAvailable: Bool {
        FileManager.default.fileExists(atPath: module) && FileManager.default.isExecutableFile(atPath: binary)
    }

    public let directory: URL
    public private(set) var port: Int
    /// `on_publish`/`on_publish_done` callbacks go to this HTTP base URL, if any.
    public let callbacks: String?
    /// Where nginx itself pushes every stream it receives (nginx-rtmp's `push`).
    public let pushTo: [String]
    private var process: Process?

    /// Directives for an `http { }` block (an HTTP server in the same nginx), if any.
    public let http: String?

    /// Writes the config and starts nginx. `port` 0 picks a free one.
    public init(directory: URL, port: Int = 0, callbacks: String? = nil, pushTo: [String] = [], http: String? = nil) throws {
        self.http = http
        self.directory = directory
        self.port = port == 0 ? try Self.freePort() : port
        self.callbacks = callbacks
        self.pushTo = pushTo
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("tmp"), withIntermediateDirectories: true)
        try start()
    }

    /// rtmp://127.0.0.1:PORT/live, where publishers push and players pull (`/KEY` appended).
    public var url: String { "rtmp://127.0.0.1:\(port)/live" }

    public var pid: Int32 { process?.processIdentifier ?? 0 }
    public var isRunning: Bool { process?.isRunning ?? false }

    public var config: String {
        var app = "live on; record off; idle_streams off;"
        if let callbacks {
            app += " on_publish \(callbacks)/on_publish; on_publish_done \(callbacks)/on_publish_done; notify_method post;"
        }
        for target in pushTo { app += " push \(target);" }
        let d = directory.path
        return """
            load_module \(Self.module);
            daemon off; master_process off; pid \(d)/nginx.pid; error_log \(d)/error.log info;
            events { worker_connections 4096; }
            rtmp { server { listen 127.0.0.1:\(port); chunk_size 4096; application live { \(app) } } }
            \(http.map { "http { access_log \(d)/access.log; client_body_temp_path \(d)/tmp; proxy_temp_path \(d)/tmp;\n\($0)\n}" } ?? "")

            """
    }

    /// Starts nginx again on the same port (after `stop` or `kill`).
    public func start() throws {
        guard !isRunning else { return }
        let conf = directory.appendingPathComponent("nginx.conf")
        try config.write(to: conf, atomically: true, encoding: .utf8)
        for _ in 0..<100 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: Self.binary)
            p.arguments = ["-p", directory.path, "-c", conf.path, "-e", directory.appendingPathComponent("error.log").path]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            // Ready when the port answers; a port still held by the previous instance makes it exit.
            for _ in 0..<100 where p.isRunning {
                if Self.accepts(port: port) {
                    process = p
                    return
                }
                usleep(20_000)
            }
            if p.isRunning { p.terminate() }
            usleep(100_000)
        }
        throw RPCStatus(.unavailable, "nginx did not start on port \(port):\n\(errorLog)")
    }

    /// What nginx logged.
    public var errorLog: String {
        (try? String(contentsOf: directory.appendingPathComponent("error.log"), encoding: .utf8)) ?? ""
    }

    /// SIGKILL: the platform's media server dies mid-stream.
    public func kill() {
        guard let p = process, p.isRunning else { return }
        Foundation.kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
    }

    /// SIGQUIT (graceful) and wait.
    public func stop() {
        guard let p = process, p.isRunning else { return }
        Foundation.kill(p.processIdentifier, SIGQUIT)
        for _ in 0..<250 where p.isRunning { usleep(20_000) }
        if p.isRunning { Foundation.kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
    }

    deinit { if let p = process, p.isRunning { Foundation.kill(p.processIdentifier, SIGKILL) } }

    /// A loopback port nobody listens on right now.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw RPCStatus(.unavailable, "no free loopback port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = UInt16(port).bigEndian
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
