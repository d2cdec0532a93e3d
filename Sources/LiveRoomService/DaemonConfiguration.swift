import Foundation
import LiveRoomDomain
import LiveRoomRPC
import Logging
import NIOCore
import NIOPosix

/// The daemon's settings: defaults, then the config file, then command-line flags.
///
/// The file is `key = value` lines (values bare or in double quotes), `#` comments, and
/// `[platform.ID]` sections for external platforms. Every key is documented in README.md.
public struct DaemonConfiguration: Sendable, Equatable {
    public var socketPath = "./liveroomd.sock"
    public var tcp: String?
    public var dataDir = "./data"
    public var maxFrameSize = 4 * 1024 * 1024
    public var maxConcurrentCalls = 1024
    public var gracePeriodSeconds = 10
    public var logLevel = Logger.Level.info
    /// Bearer token that calls over TCP must present (`authorization: Bearer TOKEN`).
    public var tcpToken: String?
    public var enableTestService = false
    /// The built-in platform's push server and play URLs.
    public var builtin = BuiltinEndpoints()
    /// Whether push_server was configured; if not, it follows the RTMP listener.
    public var pushServerConfigured = false
    /// Whether play_url_base was configured; if not, it follows the HTTP listener.
    public var playURLBaseConfigured = false
    /// The RTMP listener for encoders; nil turns it off.
    public var rtmp: String? = "127.0.0.1:1935"
    /// Prometheus metrics over HTTP at HOST:PORT (`GET /metrics`); nil turns them off.
    public var metrics: String?
    /// The HTTP listener for players (HTTP-FLV, fMP4, LL-HLS, the web player); nil turns it off.
    public var http: String? = "127.0.0.1:8080"
    /// The base URL players reach the HTTP listener at (behind a proxy or CDN); nil: the
    /// listener's own address.
    public var httpPublicURL: String?
    /// LL-HLS: segments start at a keyframe once this long; parts are at most this long.
    public var hlsSegmentMs = 2000
    public var hlsPartMs = 500
    /// An HTTP client must send a whole request within this (slow clients are closed).
    public var httpRequestTimeoutMs = 10_000
    /// The RTMP application name publishers use (`rtmp://HOST:PORT/APP/STREAM_KEY`).
    public var rtmpApp = "live"
    /// Key lifetime on the built-in platform.
    public var keyTTLSeconds: Int64 = 24 * 3600
    /// External platforms, in file order.
    public var platforms: [PlatformSettings] = []
    /// A publisher silent this long is considered gone.
    public var publisherIdleTimeoutMs: Int64 = 10_000
    /// Per-viewer queue: bytes before skipping to the next keyframe, and skips (in 30 s)
    /// before the viewer is disconnected.
    public var viewerQueueBytes = 4 * 1024 * 1024
    /// A viewer that takes nothing for this long while media waits for it is disconnected.
    public var viewerMaxStallMs: Int64 = 15_000
    public var viewerMaxSkips = 3
    /// How long writes to a viewer of a live room may wait to go out together; 0 sends each
    /// chunk at once. Meeting rooms always send at once.
    public var viewerMergeMs = 50
    /// How often open direct-ingest rooms' platforms are asked whether they are live (to mirror them).
    public var mirrorPollMs: Int64 = 5000
    /// Longest wait between a failing destination's (or pull's) attempts; the first is 1 s.
    public var relayRetryMaxMs: Int64 = 30_000
    /// Testing only: caps the database size in pages, to simulate a full disk.
    public var storeMaxPageCount: Int?

    public init() {}

    /// A config file problem, naming the file, line and option.
    public struct FileError: Error, CustomStringConvertible, Equatable {
        public var description: String
    }

    public mutating func load(file path: String) throws {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw FileError(description: "cannot read config file \(path): \(error.localizedDescription)")
        }
        try apply(text: text, name: path)
    }

    public mutating func apply(text: String, name: String) throws {
        var section = ""
        var platformIndex: Int?
        var sectionLines: [String: Int] = [:]
        // Files written on Windows end lines with CR LF, which Swift reads as one character.
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" })
        for (n, rawLine) in lines.enumerated() {
            let lineNo = n + 1
            let line = Self.stripComment(String(rawLine)).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func fail(_ why: String) -> FileError { FileError(description: "\(name):\(lineNo): \(why)") }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw fail("a section header must look like [name]") }
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                guard section.hasPrefix("platform."), section.count > 9 else {
                    throw fail("unknown section [\(section)]; sections are [platform.ID]")
                }
                let id = String(section.dropFirst(9))
                guard id != PlatformSettings.builtinID else { throw fail("[platform.self] is the built-in platform and cannot be configured as external") }
                guard id.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw fail("platform id \"\(id)\" may use letters, digits, - and _ only")
                }
                guard !platforms.contains(where: { $0.id == id }) else { throw fail("platform \(id) is configured twice") }
                platforms.append(PlatformSettings(id: id, displayName: id))
                platformIndex = platforms.count - 1
                sectionLines[id] = lineNo
                continue
            }
            guard let eq = line.firstIndex(of: "=") else { throw fail("expected key = value, got \"\(line)\"") }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, value.hasPrefix("\""), value.hasSuffix("\"") { value = String(value.dropFirst().dropLast()) }
            func int(_ range: ClosedRange<Int>) throws -> Int {
                guard let v = Int(value), range.contains(v) else {
                    throw fail("\(key) must be a whole number from \(range.lowerBound) to \(range.upperBound), got \"\(value)\"")
                }
                return v
            }
            if let i = platformIndex {
                switch key {
                case "name": platforms[i].displayName = value
                case "connector": platforms[i].connector = value
                case "token": platforms[i].token = value
                case "supports":
                    let kinds = Set(value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
                    guard !kinds.isEmpty, kinds.isSubset(of: ["live", "meeting"]) else {
                        throw fail("supports must list live and/or meeting, e.g. \"live,meeting\"; got \"\(value)\"")
                    }
                    platforms[i].supportsLive = kinds.contains("live")
                    platforms[i].supportsMeeting = kinds.contains("meeting")
                case "key_ttl_seconds": platforms[i].keyTTLMs = Int64(try int(60...(365 * 86400))) * 1000
                case "timeout_ms": platforms[i].timeoutMs = Int64(try int(50...600_000))
                case "ingest":
                    switch value {
                    case "relay": platforms[i].defaultIngest = .relay
                    case "direct": platforms[i].defaultIngest = .direct
                    default: throw fail("ingest must be relay or direct, got \"\(value)\"")
                    }
                default: throw fail("unknown option \"\(key)\" in [\(section)]")
                }
                continue
            }
            switch key {
            case "socket": socketPath = value
            case "push_server":
                guard value.hasPrefix("rtmp://") else { throw fail("push_server must be an rtmp:// URL, got \"\(value)\"") }
                builtin.pushServer = value
                pushServerConfigured = true
            case "rtmp":
                do { rtmp = try Self.listener(value) } catch { throw fail("rtmp: \(error)") }
            case "metrics":
                do { metrics = try Self.listener(value) } catch { throw fail("metrics: \(error)") }
            case "http":
                do { http = try Self.listener(value) } catch { throw fail("http: \(error)") }
            case "http_public_url":
                guard value.hasPrefix("http://") || value.hasPrefix("https://") else {
                    throw fail("http_public_url must be an http:// or https:// URL, got \"\(value)\"")
                }
                httpPublicURL = value.hasSuffix("/") ? String(value.dropLast()) : value
            case "hls_segment_ms": hlsSegmentMs = try int(500...30_000)
            case "hls_part_ms": hlsPartMs = try int(100...5000)
            case "http_request_timeout_ms": httpRequestTimeoutMs = try int(100...600_000)
            case "rtmp_app":
                guard !value.isEmpty, value.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) else {
                    throw fail("rtmp_app may use letters, digits, - and _ only, got \"\(value)\"")
                }
                rtmpApp = value
            case "play_url_base":
                builtin.playURLBase = value
                playURLBaseConfigured = true
            case "key_ttl_seconds": keyTTLSeconds = Int64(try int(60...(365 * 86400)))
            case "store_max_page_count": storeMaxPageCount = try int(10...Int(Int32.max))
            case "publisher_idle_timeout_ms": publisherIdleTimeoutMs = Int64(try int(200...3_600_000))
            case "viewer_queue_bytes": viewerQueueBytes = try int(16 * 1024...(1024 * 1024 * 1024))
            case "viewer_max_skips": viewerMaxSkips = try int(0...1000)
            case "viewer_max_stall_ms": viewerMaxStallMs = Int64(try int(1000...600_000))
            case "viewer_merge_ms": viewerMergeMs = try int(0...1000)
            case "mirror_poll_ms": mirrorPollMs = Int64(try int(100...3_600_000))
            case "relay_retry_max_ms": relayRetryMaxMs = Int64(try int(1000...3_600_000))
            case "tcp":
                do { tcp = try Self.listener(value, offAllowed: false) } catch { throw fail("tcp: \(error)") }
            case "data_dir": dataDir = value
            case "max_frame_size": maxFrameSize = try int(1024...(64 * 1024 * 1024))
            case "max_concurrent_calls": maxConcurrentCalls = try int(1...100_000)
            case "grace_period_seconds": gracePeriodSeconds = try int(0...3600)
            case "log_level":
                guard let level = Logger.Level(rawValue: value) else {
                    throw fail("log_level must be one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")), got \"\(value)\"")
                }
                logLevel = level
            case "tcp_token":
                guard value.count >= 16 else { throw fail("tcp_token must be at least 16 characters") }
                tcpToken = value
            default:
                throw fail("unknown option \"\(key)\"")
            }
        }
        for p in platforms where p.connector.isEmpty {
            throw FileError(description: "\(name):\(sectionLines[p.id] ?? 0): [platform.\(p.id)] needs connector = \"unix:PATH\" or \"HOST:PORT\"")
        }
    }

    /// Checks what the file's syntax cannot: paths that cannot be used and listener addresses
    /// this machine cannot bind (each host is tried on a free port, so a daemon already running
    /// on the configured ports does not make the check fail). Every problem is listed.
    public func checkEnvironment() async -> [String] {
        var problems: [String] = []
        // The socket's folder may rightly not exist yet (systemd makes RuntimeDirectory at start).
        if socketPath.isEmpty {
            problems.append("socket: the path is empty; set socket = PATH (or --socket PATH)")
        }
        if dataDir.isEmpty {
            problems.append("data_dir: the path is empty")
        } else {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: dataDir, isDirectory: &isDirectory), !isDirectory.boolValue {
                problems.append("data_dir: \(dataDir) is a file, not a directory")
            }
        }
        for (name, address) in [("tcp", tcp), ("rtmp", rtmp), ("metrics", metrics), ("http", http)] {
            guard let address, case .tcp(let host, _)? = try? Endpoint.parseTCP(address) else { continue }
            do {
                let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: host, port: 0).get()
                try? await channel.close()
            } catch {
                problems.append("\(name): cannot listen on \(host) (\(error)); use an address of this machine, such as 127.0.0.1 or 0.0.0.0")
            }
        }
        return problems
    }

    private static func reason(_ error: Error) -> String { (error as? RPCStatus)?.message ?? "\(error)" }

    /// Why a listener address is not one (the message names what is expected).
    public struct AddressError: Error, CustomStringConvertible {
        public var description: String
    }

    /// A listener address, `HOST:PORT`, or nil for `off`: shared by the file and the flags.
    public static func listener(_ value: String, offAllowed: Bool = true) throws -> String? {
        if offAllowed && value == "off" { return nil }
        do { _ = try Endpoint.parseTCP(value) } catch {
            throw AddressError(description: reason(error) + (offAllowed ? " (or \"off\")" : ""))
        }
        return value
    }

    private static func stripComment(_ line: String) -> String {
        var inQuotes = false
        var out = ""
        for ch in line {
            if ch == "\"" { inQuotes.toggle() }
            if ch == "#" && !inQuotes { break }
            out.append(ch)
        }
        return out
    }
}
