import ArgumentParser
import Foundation
import LiveRoomRTMP
import NIOCore
import NIOPosix
import Synchronization

/// Many players of one live stream, over HTTP-FLV (a GET read to the end) or RTMP (play), for
/// comparing servers: the server's CPU-seconds per GB delivered and its memory per player.
struct PlayBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "players",
        abstract: "N players of a live stream (HTTP-FLV or RTMP) against a server pid: CPU-s/GB, RSS per player.")

    @Option(help: "An HTTP(-FLV) URL to GET, http://HOST:PORT/PATH.") var http: String?
    @Option(help: "An RTMP URL to play, rtmp://HOST:PORT/APP/STREAM.") var rtmp: String?
    @Option(help: "Players.") var players = 1000
    @Option(help: "Seconds to measure, once every player gets media.") var seconds = 10.0
    @Option(name: .customLong("server-pid"), help: "The serving process, for /proc figures.") var serverPid: Int32

    final class Counter: Sendable {
        let bytes = Atomic<Int>(0)
        let started = Atomic<Int>(0)
        let failed = Atomic<Int>(0)
    }

    func run() async throws {
        let counter = Counter()
        let rssBefore = Proc.rssKB(serverPid)
        let group = MultiThreadedEventLoopGroup.singleton
        var channels: [Channel] = []
        var tasks: [Task<Void, Never>] = []
        if let http {
            guard let url = URL(string: http), let host = url.host, let port = url.port else { throw ValidationError("--http needs http://HOST:PORT/PATH") }
            let path = url.path + (url.query.map { "?" + $0 } ?? "")
            let request = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nUser-Agent: liveroom-bench\r\n\r\n"
            for _ in 0..<players {
                let channel = try await ClientBootstrap(group: group)
                    .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(ByteCounter(counter, request)) } }
                    .connect(host: host, port: port).get()
                channels.append(channel)
            }
        } else if let rtmp {
            let parts = rtmp.split(separator: "/", omittingEmptySubsequences: false)
            let server = try RTMPURL(parts.dropLast().joined(separator: "/"))
            let stream = String(parts.last ?? "")
            for _ in 0..<players {
                tasks.append(Task {
                    var first = true
                    do {
                        try await RTMPClient.play(from: server, stream: stream) { message in
                            if first {
                                first = false
                                counter.started.add(1, ordering: .relaxed)
                            }
                            counter.bytes.add(message.payload.readableBytes, ordering: .relaxed)
                        }
                    } catch {
                        if !Task.isCancelled { counter.failed.add(1, ordering: .relaxed) }
                    }
                })
            }
        } else {
            throw ValidationError("give --http or --rtmp")
        }
        // Every player in and getting media (or given up on).
        let deadline = ContinuousClock.now + .seconds(30)
        while counter.started.load(ordering: .relaxed) + counter.failed.load(ordering: .relaxed) < players && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        try await Task.sleep(for: .seconds(1))
        let rssWith = Proc.rssKB(serverPid)
        let cpu0 = Proc.cpuSeconds(serverPid)
        let bytes0 = counter.bytes.load(ordering: .relaxed)
        let began = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
        let cpu1 = Proc.cpuSeconds(serverPid)
        let bytes1 = counter.bytes.load(ordering: .relaxed)
        let elapsed = ContinuousClock.now - began
        for c in channels { c.close(promise: nil) }
        for t in tasks { t.cancel() }
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let gb = Double(bytes1 - bytes0) / 1e9
        let result: [String: Any] = [
            "players": players, "started": counter.started.load(ordering: .relaxed), "failed": counter.failed.load(ordering: .relaxed),
            "deliveredMBps": Double(bytes1 - bytes0) / 1e6 / secs, "serverCPUPercent": (cpu1 - cpu0) / secs * 100,
            "cpuSecondsPerGB": gb > 0 ? (cpu1 - cpu0) / gb : 0, "rssPerPlayerKB": Double(rssWith - rssBefore) / Double(players),
        ]
        let json = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }
}

/// Sends one request when connected, then counts every byte that comes back.
final class ByteCounter: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let counter: PlayBench.Counter
    let request: String
    private let seen = Atomic<Bool>(false)

    init(_ counter: PlayBench.Counter, _ request: String) {
        self.counter = counter
        self.request = request
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(NIOAny(ByteBuffer(string: request)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let n = unwrapInboundIn(data).readableBytes
        if !seen.exchange(true, ordering: .relaxed) { counter.started.add(1, ordering: .relaxed) }
        counter.bytes.add(n, ordering: .relaxed)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !seen.load(ordering: .relaxed) { counter.failed.add(1, ordering: .relaxed) }
        context.fireChannelInactive()
    }
}
