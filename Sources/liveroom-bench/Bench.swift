import ArgumentParser
import Foundation
import LiveRoomMessages
import LiveRoomRPC
import NIOCore
import NIOPosix

/// Load generators behind tools/bench. Each prints one JSON line of figures.
@main
struct Bench: AsyncParsableCommand {
    /// Runs Swift concurrency on NIO's event loops, so handler tasks and I/O share threads
    /// instead of hopping between two pools on every call.
    static func main() async {
        NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        await main(nil)
    }

    static let configuration = CommandConfiguration(
        commandName: "liveroom-bench",
        abstract: "Benchmarks for liveroomd (run through tools/bench).",
        subcommands: [RPCBench.self, FanoutBench.self, AudienceBench.self, PlayBench.self])
}

/// Latency samples from many workers, summarised.
struct Summary: Codable {
    var calls: Int
    var seconds: Double
    var callsPerSecond: Double
    var p50Micros: Double
    var p99Micros: Double
    var errors: Int

    init(samples: [Double], seconds: Double, errors: Int) {
        let sorted = samples.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? 0 : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1e6 }
        calls = sorted.count
        self.seconds = seconds
        callsPerSecond = Double(sorted.count) / seconds
        p50Micros = pct(0.50)
        p99Micros = pct(0.99)
        self.errors = errors
    }
}

struct RPCBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rpc",
        abstract: "Unary calls (64-byte payloads) against a liveroomd started with --enable-test-service.")

    @Option(help: "unix:PATH or tcp:HOST:PORT")
    var target: String

    @Option(help: "Calls in flight at once.")
    var inflight = 1

    @Option(help: "Seconds to measure (after a warm-up of a fifth of that).")
    var seconds = 3.0

    @Option(help: "Connections the calls are spread over.")
    var connections = 1

    @Option(help: "Bearer token for TCP.")
    var token: String?

    func run() async throws {
        let endpoint: Endpoint = target.hasPrefix("unix:") ? .unix(path: String(target.dropFirst(5))) : try .parseTCP(String(target.dropFirst(4)))
        var configuration = ClientConfiguration()
        if let token { configuration.defaultMetadata.add("authorization", "Bearer \(token)") }
        var clients: [RPCClient] = []
        for _ in 0..<connections { clients.append(try await RPCClient.connect(to: endpoint, configuration: configuration)) }
        var request = SimpleRequest()
        request.payload = ByteBuffer(repeating: 7, count: 64)
        request.responseSize = 64
        let payload = try MessageCoding.encode(request)
        let path = TestService.unaryCall.info.path
        let all = clients
        let warmup = seconds / 5
        let start = ContinuousClock.now
        let measureFrom = start + .milliseconds(Int64(warmup * 1000))
        let end = measureFrom + .milliseconds(Int64(seconds * 1000))
        let results = try await withThrowingTaskGroup(of: ([Double], Int).self) { group in
            for w in 0..<inflight {
                let worker = Worker(client: all[w % all.count])
                group.addTask { await worker.run(path: path, payload: payload, measureFrom: measureFrom, end: end) }
            }
            var samples: [Double] = []
            var errors = 0
            for try await (s, e) in group {
                samples += s
                errors += e
            }
            return (samples, errors)
        }
        for c in clients { await c.close() }
        let summary = Summary(samples: results.0, seconds: seconds, errors: results.1)
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        print(String(decoding: try encoder.encode(summary), as: UTF8.self))
    }
}

/// Makes calls one after another on its connection's event loop: as any client written for
/// throughput would, it runs where the answers arrive, so a call needs no executor hop.
actor Worker {
    let client: RPCClient
    init(client: RPCClient) { self.client = client }
    nonisolated var unownedExecutor: UnownedSerialExecutor { client.eventLoop.executor.asUnownedSerialExecutor() }

    func run(path: String, payload: RPCPayload, measureFrom: ContinuousClock.Instant, end: ContinuousClock.Instant) async -> ([Double], Int) {
        var samples: [Double] = []
        samples.reserveCapacity(200_000)
        var errors = 0
        while true {
            let t0 = ContinuousClock.now
            if t0 >= end { break }
            do {
                _ = try await client.unary(path: path, request: payload)
            } catch {
                errors += 1
            }
            let t1 = ContinuousClock.now
            if t0 >= measureFrom {
                let d = (t1 - t0).components
                samples.append(Double(d.seconds) + Double(d.attoseconds) / 1e18)
            }
        }
        return (samples, errors)
    }
}
