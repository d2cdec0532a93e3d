import ArgumentParser
import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC

/// liveroomctl: the debug client for liveroomd.
@main
struct LiveRoomCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "liveroomctl",
        abstract: "Debug client for liveroomd.",
        subcommands: [
            HealthCommand.self, PlatformsCommand.self, CreateRoomCommand.self, RoomCommand.self, RoomsCommand.self,
            RefreshCommand.self, RotateKeyCommand.self, CloseCommand.self, PublishCommand.self, WatchCommand.self,
            ViewersCommand.self, StatsCommand.self, ReportCommand.self, CallCommand.self, MethodsCommand.self,
            DescribeCommand.self, DestinationsCommand.self, ViewerTokenCommand.self,
        ])
}

/// Options every command shares.
struct GlobalOptions: ParsableArguments {
    @Option(help: "The daemon's Unix socket (default ./liveroomd.sock).")
    var socket: String?

    @Option(help: "Reach the daemon over TCP at HOST:PORT instead.")
    var tcp: String?

    @Option(help: "Token for calls over TCP (or LIVEROOM_TCP_TOKEN).")
    var token: String?

    @Option(help: "Give up after this many seconds.")
    var timeout: Double?

    @Flag(help: "Machine-readable JSON output.")
    var json = false

    var connection: ConnectionOptions { ConnectionOptions(socket: socket, tcp: tcp, token: token) }
    var deadline: Duration? { timeout.map { .milliseconds(Int64($0 * 1000)) } }
}

/// Prints a failed call as `CODE: message` and exits non-zero, never with a stack trace.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch let status as RPCStatus {
        FileHandle.standardError.write(Data("liveroomctl: \(status.code.name): \(status.message)\n".utf8))
        throw ExitCode(1)
    } catch let error as ProtoError {
        FileHandle.standardError.write(Data("liveroomctl: INVALID_ARGUMENT: \(error)\n".utf8))
        throw ExitCode(1)
    }
}

func printLine(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8))
}

struct HealthCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "health", abstract: "Ask whether the daemon is serving.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "A service name; empty for the whole daemon.")
    var service = ""
    @Option(help: "Keep asking for up to this many seconds until the daemon is serving (for scripts that start it).")
    var wait: Double?

    func run() async throws {
        try await reportingErrors {
            var request = HealthCheckRequest()
            request.service = service
            let until = ContinuousClock.now + .milliseconds(Int64((wait ?? 0) * 1000))
            var response = HealthCheckResponse()
            while true {
                do {
                    let client = try await global.connection.connect()
                    response = try await client.unary(Health.check, request, timeout: global.deadline ?? .seconds(5))
                    await client.close()
                    if response.status == .serving || ContinuousClock.now >= until { break }
                } catch {
                    if ContinuousClock.now >= until { throw error }
                }
                try await Task.sleep(for: .milliseconds(100))
            }
            let name = response.status.name.replacingOccurrences(of: "SERVING_STATUS_", with: "")
            printLine(global.json ? #"{"status":"\#(response.status.name)"}"# : name)
            if response.status != .serving { throw ExitCode(1) }
        }
    }
}

struct CallCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "call",
        abstract: "Call any method with JSON, like grpcurl.",
        discussion: """
            The request is JSON with the field names of the .proto file (lowerCamelCase also works). \
            Without a JSON argument, or with '-', it is read from stdin. Streaming methods take one JSON \
            object per line. Example: liveroomctl call liveroom.v1.Health/Check '{"service": ""}'
            """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Full method name: liveroom.v1.Service/Method (or .Method).")
    var method: String
    @Argument(help: "The request as JSON ('-' or nothing: stdin).")
    var request: String?
    @Option(name: .customLong("metadata"), help: "Metadata to send, as key:value (repeatable).")
    var metadata: [String] = []

    func run() async throws {
        try await reportingErrors {
            let call = try DynamicCall(methodName: method)
            var text = request ?? "-"
            if text == "-" {
                text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
            }
            var md = Metadata()
            for m in metadata {
                guard let colon = m.firstIndex(of: ":") else { throw ValidationError("--metadata takes key:value, got \(m)") }
                md.add(String(m[..<colon]), String(m[m.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
            }
            let client = try await global.connection.connect()
            defer { Task { await client.close() } }
            let pretty = !global.json
            _ = try await call.run(on: client, requests: splitJSONRequests(text), metadata: md, timeout: global.deadline, pretty: pretty) {
                printLine($0)
            }
        }
    }
}

struct MethodsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "methods", abstract: "List every method with its request and response types.")
    @Flag(help: "Machine-readable JSON output.")
    var json = false
    @Flag(help: "Also the test-only services (served only by a daemon started with --enable-test-service).")
    var all = false

    func run() async throws {
        for m in AllServices.methods where all || !m.path.hasPrefix("/liveroom.testing.") {
            if json {
                printLine(#"{"method":"\#(m.path)","kind":"\#(m.kind.rawValue)","request":"\#(m.inputType)","response":"\#(m.outputType)"}"#)
            } else {
                printLine("\(m.path)  (\(m.kind.rawValue))  \(m.inputType) -> \(m.outputType)")
            }
        }
    }
}

struct DescribeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "describe", abstract: "Print a message's or enum's fields.")
    @Argument(help: "A full type name, e.g. liveroom.v1.Room.")
    var type: String

    func run() async throws {
        if let d = LiveRoomDescriptors.pool.message(named: type) {
            printLine(describeMessage(d))
        } else if let e = LiveRoomDescriptors.pool.enums[type] {
            printLine(describeEnum(e))
        } else {
            let close = LiveRoomDescriptors.pool.messages.keys.filter { $0.lowercased().contains(type.lowercased()) }.sorted()
            throw ValidationError("no type \(type)\(close.isEmpty ? "" : "; did you mean \(close.prefix(5).joined(separator: ", "))?")")
        }
    }
}
