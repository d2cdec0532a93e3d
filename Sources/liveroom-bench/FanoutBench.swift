import ArgumentParser
import Foundation
import LiveRoomClient
import LiveRoomMessages
import LiveRoomRPC
import NIOConcurrencyHelpers
import NIOCore

/// CPU and memory of the daemon while one publisher fans out to N viewers.
struct FanoutBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fanout", abstract: "One publisher, N viewers; daemon CPU per GB, memory per viewer, latency.")

    @Option(help: "unix:PATH of a running liveroomd.") var target: String
    @Option(name: .customLong("daemon-pid"), help: "The daemon's pid, for /proc figures.") var daemonPid: Int32
    @Option(help: "Viewers, each on its own connection.") var viewers = 10
    @Option(name: .customLong("rate-kbps"), help: "Publishing rate in kbit/s; 0 = as fast as possible.") var rateKbps = 3000.0
    @Option(name: .customLong("chunk-size"), help: "Bytes per media chunk.") var chunkSize = 16 * 1024
    @Option(help: "Seconds to measure.") var seconds = 5.0
    @Option(name: .customLong("rtmp-port"), help: "Publish over RTMP to this port with ffmpeg instead of StreamData.") var rtmpPort: Int?
    @Option(name: .customLong("rtmp-file"), help: "The FLV file ffmpeg publishes (looped; -re when --rate-kbps > 0).") var rtmpFile: String?

    func run() async throws {
        let endpoint = Endpoint.unix(path: String(target.dropFirst(5)))
        let control = try await RPCClient.connect(to: endpoint)
        var create = CreateRoomRequest()
        create.kind = .live
        create.platformId = "self"
        create.title = "fanout bench"
        let room = try await control.unary(RoomService.createRoom, create).room!

        let rssBefore = Proc.rssKB(daemonPid)
        var clients: [RPCClient] = []
        for _ in 0..<viewers { clients.append(try await RPCClient.connect(to: endpoint)) }
        let sendTimes = NIOLockedValueBox<[UInt64: ContinuousClock.Instant]>([:])
        let measuring = NIOLockedValueBox(false)
        let delivered = NIOLockedValueBox(0)
        let latencies = NIOLockedValueBox<[Double]>([])
        // Viewers the daemon skipped ahead to a keyframe at least once, and viewers it ended for
        // falling behind again and again.
        let skipped = NIOLockedValueBox(0)
        let dropped = NIOLockedValueBox(0)
        let closing = NIOLockedValueBox(false)
        var tasks: [Task<Void, Never>] = []
        for (i, c) in clients.enumerated() {
            var w = WatchRequest()
            w.roomId = room.roomId
            w.viewerId = "bench-\(i)"
            let call = try await c.serverStreaming(MediaService.watch, w)
            tasks.append(Task {
                var mine: [Double] = []
                var bytes = 0
                var wasSkipped = false
                do {
                    for try await m in call.responses {
                        if case .chunk(let chunk)? = m.message {
                            let now = ContinuousClock.now
                            if measuring.withLockedValue({ $0 }) {
                                bytes += chunk.payload.readableBytes
                                if let sent = sendTimes.withLockedValue({ $0[chunk.sequence] }) {
                                    let d = (now - sent).components
                                    mine.append(Double(d.seconds) * 1e6 + Double(d.attoseconds) / 1e12)
                                }
                            }
                        } else if case .event(let e)? = m.message, e.kind == .skipped, !wasSkipped {
                            wasSkipped = true
                            skipped.withLockedValue { $0 += 1 }
                        }
                    }
                } catch {
                    // Ended by the daemon (too slow); the bench closing its connections is not.
                    if !closing.withLockedValue({ $0 }) { dropped.withLockedValue { $0 += 1 } }
                }
                delivered.withLockedValue { $0 += bytes }
                latencies.withLockedValue { $0 += mine }
            })
        }
        // Wait until every viewer is in.
        var statsRequest = GetRoomStatsRequest()
        statsRequest.roomId = room.roomId
        while try await control.unary(AudienceService.getRoomStats, statsRequest).viewers?.onlineNow ?? 0 < Int64(viewers) {
            try await Task.sleep(for: .milliseconds(50))
        }
        let rssWithViewers = Proc.rssKB(daemonPid)

        let warmup = Duration.seconds(1)
        let began = ContinuousClock.now
        var cpuStart: Double?
        var measuredFrom = began
        var seq: UInt64 = 0
        let finishPublisher: () async throws -> Void
        if let rtmpPort, let rtmpFile {
            // ffmpeg relays a real H.264/AAC file; the daemon does the RTMP work being measured.
            let ffmpeg = Process()
            ffmpeg.executableURL = URL(fileURLWithPath: "/usr/bin/ffmpeg")
            ffmpeg.arguments = ["-nostdin", "-loglevel", "error"] + (rateKbps > 0 ? ["-re"] : []) + [
                "-stream_loop", "-1", "-i", rtmpFile, "-c", "copy", "-f", "flv", "rtmp://127.0.0.1:\(rtmpPort)/live/\(room.streamKey)"]
            try ffmpeg.run()
            try await Task.sleep(for: warmup)
            cpuStart = Proc.cpuSeconds(daemonPid)
            measuredFrom = ContinuousClock.now
            measuring.withLockedValue { $0 = true }
            try await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            finishPublisher = {
                ffmpeg.terminate()
                ffmpeg.waitUntilExit()
            }
        } else {
            let publisherClient = try await RPCClient.connect(to: endpoint)
            let publisher = try await publisherClient.startPublishing(roomId: room.roomId, streamKey: room.streamKey)
            let payload = ByteBuffer(repeating: 0x5A, count: chunkSize)
            var sent = 0
            while ContinuousClock.now - began < warmup + .milliseconds(Int64(seconds * 1000)) {
                if cpuStart == nil && ContinuousClock.now - began >= warmup {
                    cpuStart = Proc.cpuSeconds(daemonPid)
                    measuredFrom = ContinuousClock.now
                    measuring.withLockedValue { $0 = true }
                }
                var c = MediaChunk()
                c.sequence = seq
                c.keyframe = seq % 50 == 0
                c.payload = payload
                sendTimes.withLockedValue { $0[seq] = ContinuousClock.now }
                try await publisher.send(chunk: c)
                seq += 1
                sent += chunkSize
                if rateKbps > 0 {
                    let due = Duration.seconds(Double(sent * 8) / (rateKbps * 1000))
                    let ahead = due - (ContinuousClock.now - began)
                    if ahead > .zero { try await Task.sleep(for: ahead) }
                }
            }
            finishPublisher = {
                _ = try await publisher.finish()
                await publisherClient.close()
            }
        }
        // Let the last chunks arrive, then stop counting.
        try await Task.sleep(for: .milliseconds(300))
        measuring.withLockedValue { $0 = false }
        let cpuEnd = Proc.cpuSeconds(daemonPid)
        let elapsed = ContinuousClock.now - measuredFrom
        try await finishPublisher()
        closing.withLockedValue { $0 = true }
        for c in clients { await c.close() }
        for t in tasks { _ = await t.value }
        await control.close()

        let bytes = delivered.withLockedValue { $0 }
        let lat = latencies.withLockedValue { $0 }.sorted()
        func pct(_ p: Double) -> Double { lat.isEmpty ? 0 : lat[min(lat.count - 1, Int(Double(lat.count) * p))] }
        let cpu = cpuEnd - (cpuStart ?? cpuEnd)
        let gb = Double(bytes) / 1e9
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let result: [String: Any] = [
            "viewers": viewers, "rateKbps": rateKbps, "deliveredMB": Double(bytes) / 1e6,
            "deliveredMBps": Double(bytes) / 1e6 / secs,
            "cpuSecondsPerGB": gb > 0 ? cpu / gb : 0, "daemonCPUPercent": cpu / secs * 100,
            "rssPerViewerKB": viewers > 0 ? Double(rssWithViewers - rssBefore) / Double(viewers) : 0,
            "p50Micros": pct(0.5), "p99Micros": pct(0.99), "viewersSkipped": skipped.withLockedValue { $0 }, "viewersDropped": dropped.withLockedValue { $0 }, "chunksPublished": Int(seq),
            "source": rtmpPort == nil ? "streamdata" : "rtmp",
        ]
        let data = try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }
}

/// Figures of another process from /proc.
enum Proc {
    static func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is state (field 3); utime is field 14, stime field 15.
        let utime = Double(fields[11]) ?? 0, stime = Double(fields[12]) ?? 0
        return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    static func rssKB(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(separator: " ").dropFirst().first ?? "0") ?? 0
        }
        return 0
    }
}
