import CoreMetrics
import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRTMP
import Logging
import NIOCore
import NIOPosix
import Synchronization

/// What a relay needs from the daemon, shared by every destination.
struct RelayContext: Sendable {
    let registry: RoomRegistry
    /// Destinations are fed on their connection's event loop, one lane per loop.
    let lanes = RelayLanes()
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

    enum Outcome: Sendable {
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
            // The connection and the queue's feeding share one event loop: no hop per chunk.
            let lane = context.lanes.lane(for: MultiThreadedEventLoopGroup.singleton.next())
            let output: (token: Int, queue: ViewerQueue)
            do { output = try await room.attachOutput(lane: lane) } catch { break }  // the room has ended
            let outcome = await relay(QueueReader(output.queue), lane: lane, awaitNewPublisher: awaitNewPublisher)
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
    private func relay(_ reader: QueueReader, lane: RelayLane, awaitNewPublisher: Bool) async -> Outcome {
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
        let queue = reader.queue
        do {
            return try await RTMPClient.publish(to: server, streamKey: key, configuration: context.client, group: lane.eventLoop) { [self] publisher in
                state.withLock { $0.live(nowMs: registry.now) }
                metrics.live.increment()
                defer { metrics.live.decrement() }
                let loop = publisher.channel.eventLoop
                let done = loop.makePromise(of: Outcome.self)
                let sent: @Sendable (Int) -> Void = { [self] bytes in
                    state.withLock { $0.sent(bytes, nowMs: registry.now) }
                    metrics.bytesSent.increment(by: bytes)
                }
                try await loop.submit {
                    let pump = RelayPump(queue: queue, publisher: publisher, done: done, sent: sent)
                    try publisher.channel.pipeline.syncOperations.addHandler(pump.writer, position: .first)
                    pump.start(first: initial)
                }.get()
                return try await done.futureResult.get()
            }
        } catch let e as RTMPClientError {
            switch e {
            case .refused(let why): return .refused("\(server) refused the stream: \(why)")
            case .failed(let why): return .failed("\(server): \(why)")
            }
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

/// Turns a room's chunks back into FLV tags, on a timeline that starts at the first tag sent on
/// this connection and keeps growing across publisher changes.
struct TagSender {
    private var reader = FLVTagReader()
    private var base: UInt32?
    private var carry: UInt32 = 0
    private var last: UInt32 = 0

    /// The tags the chunk completes, stamped for this connection.
    mutating func tags(for chunk: MediaChunk) throws -> [FLVTag] {
        reader.feed(chunk.payload)
        var tags: [FLVTag] = []
        while let item = try reader.next() {
            switch item {
            case .streamStart:
                // A new publisher: its timestamps start again; ours go on from where they were.
                carry = last
                base = nil
            case .tag(var tag):
                tag.timestamp = chunk.header ? last : stamp(tag.timestamp)
                tags.append(tag)
            }
        }
        return tags
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

/// Moves a destination's queue into its RTMP connection, on the connection's event loop: the
/// room's lane offers each chunk on that loop, and the pump writes it at once while the
/// connection takes writes, or leaves it queued (to skip, or be dropped) while it does not.
/// Confined to the loop.
final class RelayPump {
    let writer: RTMPTagWriter
    private let queue: ViewerQueue
    private let done: EventLoopPromise<DestinationRunner.Outcome>
    private let sent: @Sendable (Int) -> Void
    private let loop: EventLoop
    private var sender = TagSender()
    private var finished = false

    init(queue: ViewerQueue, publisher: RTMPPublisher, done: EventLoopPromise<DestinationRunner.Outcome>, sent: @escaping @Sendable (Int) -> Void) {
        self.queue = queue
        self.done = done
        self.sent = sent
        self.loop = publisher.channel.eventLoop
        var onChange: ((Bool) -> Void)?
        writer = RTMPTagWriter(streamId: publisher.streamId, chunkSize: publisher.chunkSize) { open in onChange?(open) }
        onChange = { [weak self] open in
            if open { self?.drain() } else { self?.finish(.failed("the server closed the connection")) }
        }
    }

    func start(first: MediaChunk) {
        guard writer.isOpen else {
            finish(.failed("the server closed the connection"))
            return
        }
        handle(.chunk(first))
        writer.flush()
        let me = NIOLoopBound(self, eventLoop: loop)
        queue.onReady(direct: { item in me.value.offered(item) }, { me.value.drain() })
    }

    /// An item offered to the empty queue: written now if the connection takes it.
    private func offered(_ item: ViewerItem) -> Bool {
        guard !finished, writer.isWritable else { return false }
        handle(item)
        writer.flush()
        return true
    }

    private func drain() {
        var wrote = false
        loop: while !finished && writer.isWritable {
            switch queue.poll() {
            case .item(let item):
                handle(item)
                wrote = true
            case .empty:
                break loop
            case .finished(let error):
                finish(error.map { .failed("fell behind: \($0.message)") } ?? .roomClosed)
            }
        }
        if wrote { writer.flush() }
    }

    private func handle(_ item: ViewerItem) {
        guard !finished else { return }
        switch item {
        case .chunk(let chunk):
            do {
                var bytes = 0
                for tag in try sender.tags(for: chunk) {
                    try writer.write(tag)
                    bytes += tag.data.readableBytes
                }
                if bytes > 0 { sent(bytes) }
            } catch let e as RTMPError {
                finish(.refused("the room's media cannot be relayed over RTMP: \(e.description) (only FLV, as RTMP and liveroomctl publish make, can be)"))
            } catch {
                finish(.failed("\(error)"))
            }
        case .event(let e):
            switch e.kind {
            case .ended: finish(.sourceEnded)
            case .closed: finish(.roomClosed)
            case .skipped: sender.skipped()
            default: break
            }
        }
    }

    private func finish(_ outcome: DestinationRunner.Outcome) {
        guard !finished else { return }
        finished = true
        queue.stopNotifying()
        done.succeed(outcome)
    }
}

/// A lane per event loop for the relays whose connections live there.
final class RelayLanes: Sendable {
    private let lanes = Mutex<[ObjectIdentifier: RelayLane]>([:])

    func lane(for loop: EventLoop) -> RelayLane {
        lanes.withLock { all in
            if let l = all[ObjectIdentifier(loop)] { return l }
            let l = RelayLane(eventLoop: loop)
            all[ObjectIdentifier(loop)] = l
            return l
        }
    }
}

/// Feeds a room's outputs on one event loop.
final class RelayLane: ViewerLane {
    let eventLoop: EventLoop
    init(eventLoop: EventLoop) { self.eventLoop = eventLoop }
    func run(_ work: @escaping @Sendable () -> Void) { eventLoop.execute(work) }
}
