import CoreMetrics
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRTMP
import Logging
import NIOCore
import Synchronization

/// What a relay needs from the daemon, shared by every destination.
struct RelayContext: Sendable {
    let registry: RoomRegistry
    var retry = Backoff()
    var client = RTMPClient.Configuration()
    /// Whether a URL names our own RTMP ingest (publishing there would loop).
    let isOwnIngest: @Sendable (RTMPURL) -> Bool
    let metrics: RelayMetrics
    let logger: Logger
}

/// The relay's figures for the metrics endpoint (summed over destinations: ids would be unbounded labels).
struct RelayMetrics: Sendable {
    let bytesSent: CoreMetrics.Counter
    let connects: CoreMetrics.Counter
    let failures: CoreMetrics.Counter
    let live: Meter

    init(factory: any MetricsFactory) {
        bytesSent = .init(label: "liveroom_relay_bytes_sent_total", factory: factory)
        connects = .init(label: "liveroom_relay_connects_total", factory: factory)
        failures = .init(label: "liveroom_relay_failures_total", factory: factory)
        live = .init(label: "liveroom_relay_destinations_live", factory: factory)
    }
}

/// Relays one room's stream to one destination for as long as both exist: connects when the
/// source goes live, unpublishes when it ends, reconnects after failures with backoff, and
/// stops trying a destination that refused us until the source goes live again. It reads the
/// room through an output queue, so a slow destination skips to the next keyframe (or is
/// reconnected) and never holds up the publisher, our viewers or other destinations.
final class DestinationRunner: Sendable {
    let destination: DestinationRecord
    private let room: RoomActor
    private let context: RelayContext
    private let state = Mutex(DestinationStatus())
    private let task = Mutex<Task<Void, Never>?>(nil)

    init(destination: DestinationRecord, room: RoomActor, context: RelayContext) {
        self.destination = destination
        self.room = room
        self.context = context
    }

    var status: DestinationStatus { state.withLock { $0 } }

    func start() {
        task.withLock { t in
            guard t == nil else { return }
            t = Task { await self.run() }
        }
    }

    /// Stops relaying (the destination was removed, or the daemon stops) and waits for the
    /// unpublish to be sent.
    func stop() async {
        let t = task.withLock { $0 }
        t?.cancel()
        await t?.value
    }

    private enum Outcome {
        case roomClosed
        case sourceEnded
        case refused(String)
        case failed(String)
    }

    private var logger: Logger {
        var l = context.logger
        l[metadataKey: "room"] = "\(destination.roomId)"
        l[metadataKey: "destination"] = "\(destination.id)"
        return l
    }

    private func run() async {
        var backoff = context.retry
        var awaitNewPublisher = false
        while !Task.isCancelled {
            let output: (token: Int, queue: ViewerQueue)
            do { output = try await room.attachOutput() } catch { break }  // the room has ended
            let outcome = await relay(QueueReader(output.queue), awaitNewPublisher: awaitNewPublisher)
            await room.leave(output.token)
            if Task.isCancelled { break }
            switch outcome {
            case .roomClosed:
                state.withLock { $0.idle() }
                return
            case .sourceEnded:
                state.withLock { $0.idle() }
                backoff.reset()
                awaitNewPublisher = false
            case .refused(let why):
                logger.warning("destination refused the stream; tried again when the room next goes live", metadata: ["reason": "\(why)"])
                context.metrics.failures.increment()
                state.withLock { $0.failed(why) }
                awaitNewPublisher = true
            case .failed(let why):
                context.metrics.failures.increment()
                let delay = backoff.next()
                logger.notice("destination failed; retrying", metadata: ["reason": "\(why)", "retry_in_ms": "\(delay)"])
                state.withLock { $0.retrying(why, retryAtMs: context.registry.now + delay) }
                try? await Task.sleep(for: .milliseconds(delay))
            }
        }
        state.withLock { $0.idle() }
    }

    /// One turn: wait for media, connect, relay until the source ends or something fails.
    private func relay(_ reader: QueueReader, awaitNewPublisher: Bool) async -> Outcome {
        var waiting = awaitNewPublisher
        var first: MediaChunk?
        while first == nil {
            switch await reader.next() {
            case .finished(let error):
                return error.map { .failed("fell behind: \($0.message)") } ?? .roomClosed
            case .item(.event(let e)):
                if e.kind == .closed { return .roomClosed }
                if e.kind == .started { waiting = false }
            case .item(.chunk(let c)):
                if !waiting { first = c }
            case .empty:
                continue
            }
        }
        let server: RTMPURL
        let key: String
        do {
            (server, key) = try await target()
        } catch let e as RoomError {
            return e.code == .unavailable ? .failed(e.message) : .refused(e.message)
        } catch {
            return .failed("\(error)")
        }
        state.withLock { $0.connecting() }
        context.metrics.connects.increment()
        let (metrics, registry) = (context.metrics, context.registry)
        let initial = first!
        do {
            return try await RTMPClient.publish(to: server, streamKey: key, configuration: context.client) { [self] publisher in
                state.withLock { $0.live(nowMs: registry.now) }
                metrics.live.increment()
                defer { metrics.live.decrement() }
                var sender = TagSender(publisher: publisher)
                var sent = try await sender.send(initial)
                state.withLock { $0.sent(sent, nowMs: registry.now) }
                metrics.bytesSent.increment(by: sent)
                while true {
                    switch await reader.next() {
                    case .item(.chunk(let c)):
                        sent = try await sender.send(c)
                        state.withLock { $0.sent(sent, nowMs: registry.now) }
                        metrics.bytesSent.increment(by: sent)
                    case .item(.event(let e)):
                        switch e.kind {
                        case .ended: return .sourceEnded
                        case .closed: return .roomClosed
                        case .skipped: sender.skipped()
                        default: break
                        }
                    case .finished(let error):
                        return error.map { .failed("fell behind: \($0.message)") } ?? .roomClosed
                    case .empty:
                        continue
                    }
                }
            }
        } catch let e as RTMPClientError {
            switch e {
            case .refused(let why): return .refused("\(server) refused the stream: \(why)")
            case .failed(let why): return .failed("\(server): \(why)")
            }
        } catch let e as RTMPError {
            return .refused("the room's media cannot be relayed over RTMP: \(e.description) (only FLV, as RTMP and liveroomctl publish make, can be)")
        } catch {
            return .failed("\(server): \(error)")
        }
    }

    /// Where to publish: the linked room's platform ingest, or the plain RTMP destination.
    private func target() async throws -> (RTMPURL, String) {
        var url = destination.url
        var key = destination.streamKey
        if !destination.targetRoomId.isEmpty {
            let target = try await context.registry.room(destination.targetRoomId).snapshot()
            guard target.status != .ended else {
                throw RoomError(.failedPrecondition, "the linked room \(target.id) on \(target.platformId) has ended")
            }
            guard !target.platformPushServer.isEmpty, !target.platformStreamKey.isEmpty else {
                throw RoomError(.failedPrecondition, "the linked room \(target.id) has no platform ingest to publish to")
            }
            url = target.platformPushServer
            key = target.platformStreamKey
        }
        let server: RTMPURL
        do { server = try RTMPURL(url) } catch {
            throw RoomError(.failedPrecondition, "the destination's push server is not usable: \(error)")
        }
        guard !context.isOwnIngest(server) else {
            throw RoomError(.failedPrecondition, "\(server) is this daemon's own RTMP ingest: relaying there would loop")
        }
        return (server, key)
    }
}

/// Turns a room's chunks back into FLV tags and sends them, on a timeline that starts at the
/// first tag sent on this connection and keeps growing across publisher changes.
struct TagSender {
    let publisher: RTMPPublisher
    private var reader = FLVTagReader()
    private var base: UInt32?
    private var carry: UInt32 = 0
    private var last: UInt32 = 0

    init(publisher: RTMPPublisher) { self.publisher = publisher }

    /// Sends the tags the chunk completes; returns the bytes sent.
    mutating func send(_ chunk: MediaChunk) async throws -> Int {
        reader.feed(chunk.payload)
        var bytes = 0
        var tags: [FLVTag] = []
        while let item = try reader.next() {
            switch item {
            case .streamStart:
                // A new publisher: its timestamps start again; ours go on from where they were.
                carry = last
                base = nil
            case .tag(var tag):
                tag.timestamp = chunk.header ? last : stamp(tag.timestamp)
                bytes += tag.data.readableBytes
                tags.append(tag)
            }
        }
        // A chunk is a video frame and the audio before it: one write, one flush.
        try await publisher.send(tags)
        return bytes
    }

    /// Chunks were dropped: a part-read tag will never complete.
    mutating func skipped() { reader = FLVTagReader() }

    private mutating func stamp(_ ts: UInt32) -> UInt32 {
        guard let b = base else {
            base = ts
            last = carry
            return carry
        }
        let out = ts >= b ? carry &+ (ts - b) : carry
        last = out
        return out
    }
}
