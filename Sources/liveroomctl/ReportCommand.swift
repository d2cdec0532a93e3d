import ArgumentParser
import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import NIOCore

struct ReportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Send platform audience reports from JSON lines, as a connector would.",
        discussion: """
            Each line is a liveroom.v1.AudienceReport in JSON, e.g. {"sequence": 1, "viewers_online": 120, "comments": 4, \
            "sales": {"minor_units": 990, "currency": "CNY"}}. room_id defaults to ID, connector_id to "liveroomctl", and a \
            missing sequence to the line number. Prints one acknowledgement per report.
            """)
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Room id.") var id: String
    @Option(help: "JSON lines file; '-' for stdin.") var file = "-"
    @Option(name: .customLong("platform-token"), help: "The platform's connector token (identifies the platform).") var platformToken: String

    func run() async throws {
        try await reportingErrors {
            let data = file == "-" ? FileHandle.standardInput.readDataToEndOfFile() : (FileManager.default.contents(atPath: file) ?? Data())
            var reports: [AudienceReport] = []
            for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n").enumerated() {
                let text = line.trimmingCharacters(in: .whitespaces)
                if text.isEmpty { continue }
                var r: AudienceReport
                do {
                    r = try AudienceReport(buffer: try ProtoJSON.encode(text: text, as: AudienceReport.protoDescriptor))
                } catch {
                    throw ValidationError("line \(n + 1): \(error)")
                }
                if r.roomId.isEmpty { r.roomId = id }
                if r.connectorId.isEmpty { r.connectorId = "liveroomctl" }
                if r.sequence == 0 { r.sequence = UInt64(n + 1) }
                reports.append(r)
            }
            let client = try await global.connection.connect()
            defer { Task { await client.close() } }
            let call = try await client.streaming(AudienceService.reportAudience, metadata: ["authorization": "Bearer \(platformToken)"],
                                                  timeout: global.deadline)
            async let sending: Void = {
                for r in reports { try await call.send(r) }
                call.halfClose()
            }()
            for try await ack in call.responses {
                if global.json {
                    var b = ByteBuffer()
                    try ack.serialize(into: &b)
                    printLine(try ProtoJSON.text(from: b, as: AudienceAck.protoDescriptor))
                } else {
                    let what = ack.code == 0 ? (ack.duplicate ? "duplicate (counted once)" : "counted")
                        : "\(RPCStatus.Code(rawValue: ack.code).name): \(ack.message)"
                    printLine("report \(ack.sequence): \(what)")
                }
            }
            try await sending
        }
    }
}
