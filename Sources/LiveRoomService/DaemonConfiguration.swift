import Foundation
import LiveRoomRPC
import Logging

/// The daemon's settings: defaults, then the config file, then command-line flags.
///
/// The file is `key = value` lines (values bare or in double quotes), `#` comments, and
/// `[section]` headers reserved for later use. Every key is documented in README.md.
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
        for (n, rawLine) in text.components(separatedBy: "\n").enumerated() {
            let lineNo = n + 1
            let line = Self.stripComment(rawLine).trimmingCharacters(in: .whitespaces)
            if line.isEmpty { continue }
            func fail(_ why: String) -> FileError { FileError(description: "\(name):\(lineNo): \(why)") }
            if line.hasPrefix("[") {
                guard line.hasSuffix("]") else { throw fail("a section header must look like [name]") }
                section = String(line.dropFirst().dropLast()).trimmingCharacters(in: .whitespaces)
                throw fail("unknown section [\(section)]")
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
            switch key {
            case "socket": socketPath = value
            case "tcp":
                do { _ = try Endpoint.parseTCP(value) } catch { throw fail("tcp: \(error)") }
                tcp = value
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
                throw fail("unknown option \"\(key)\"\(section.isEmpty ? "" : " in [\(section)]")")
            }
        }
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
