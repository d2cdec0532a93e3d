import ArgumentParser
import Foundation
import LiveRoomMessages
import LiveRoomRPC
import NIOConcurrencyHelpers

/// Reports per second ingested and durably acknowledged, and the acknowledgement latency.
struct AudienceBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audience", abstract: "Connectors streaming audience reports.")

    @Option(help: "unix:PATH of a running liveroomd.") var target: String
    @Option(help: "Room on the platform the token belongs to.") var room: String
    @Option(help: "The platform's connector token.") var token: String
    @Option(help: "Connectors, each on its own connection.") var connectors = 1
    @Option(help: "Reports each connector sends.") var reports = 100_000
    @Option(help: "Reports per message: 1 uses ReportAudience, more uses ReportAudienceBatch.") var batch = 1

    func run() async throws {
        let endpoint = Endpoint.unix(path: String(target.dropFirst(5)))
        var configuration = ClientConfiguration()
        configuration.defaultMetadata.add("authorization", "Bearer \(token)")
        let began = ContinuousClock.now
        let total = reports
        let room = self.room
        let count = connectors
        let size = batch
        let config = configuration
        let results = try await withThrowingTaskGroup(of: ([Double], Int).self) { group in
            for c in 0..<count {
                group.addTask {
                    let client = try await RPCClient.connect(to: endpoint, configuration: config)
                    let sentAt = NIOLockedValueBox<[ContinuousClock.Instant]>(Array(repeating: began, count: total + 1))
                    let connectorId = "bench-\(c)-\(UUID().uuidString.prefix(6))"
                    func report(_ i: Int) -> AudienceReport {
                        var r = AudienceReport()
                        r.connectorId = connectorId
                        r.sequence = UInt64(i)
                        r.roomId = room
                        r.viewersOnline = Int64(i % 500)
                        r.comments = 1
                        r.likes = 2
                        return r
                    }
                    var latencies: [Double] = []
                    latencies.reserveCapacity(total)
                    var failed = 0
                    func record(_ ack: AudienceAck) {
                        let d = (ContinuousClock.now - sentAt.withLockedValue { $0[Int(ack.sequence)] }).components
                        latencies.append(Double(d.seconds) * 1e6 + Double(d.attoseconds) / 1e12)
                        if ack.code != 0 { failed += 1 }
                    }
                    if size <= 1 {
                        let call = try await client.streaming(AudienceService.reportAudience)
                        let sender = Task {
                            for i in 1...total {
                                let r = report(i)
                                sentAt.withLockedValue { $0[i] = ContinuousClock.now }
                                try await call.send(r)
                            }
                            call.halfClose()
                        }
                        for try await ack in call.responses { record(ack) }
                        try await sender.value
                    } else {
                        let call = try await client.streaming(AudienceService.reportAudienceBatch)
                        let sender = Task {
                            var i = 1
                            while i <= total {
                                var b = AudienceReportBatch()
                                b.reports = (i...min(total, i + size - 1)).map(report)
                                let now = ContinuousClock.now
                                sentAt.withLockedValue { for j in i..<(i + b.reports.count) { $0[j] = now } }
                                i += b.reports.count
                                try await call.send(b)
                            }
                            call.halfClose()
                        }
                        for try await acks in call.responses { for ack in acks.acks { record(ack) } }
                        try await sender.value
                    }
                    await client.close()
                    return (latencies, failed)
                }
            }
            var all: [Double] = []
            var failed = 0
            for try await (l, f) in group {
                all += l
                failed += f
            }
            return (all.sorted(), failed)
        }
        let elapsed = ContinuousClock.now - began
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let lat = results.0
        func pct(_ p: Double) -> Double { lat.isEmpty ? 0 : lat[min(lat.count - 1, Int(Double(lat.count) * p))] }
        let out: [String: Any] = ["connectors": connectors, "batch": batch, "reports": lat.count, "failed": results.1,
                                  "reportsPerSecond": Double(lat.count) / secs, "p50Micros": pct(0.5), "p99Micros": pct(0.99)]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }
}
