import LiveRoomDomain
import LiveRoomMessages
import LiveRoomRPC
import Synchronization

/// `liveroom.v1.AudienceService/ReportAudience`: connectors stream reports, get an
/// acknowledgement per report once it is durable.
enum ReportAudienceHandler {
    static func register(_ registry: RoomRegistry, _ ingestor: AudienceIngestor, platforms: [PlatformSettings],
                         in services: inout ServiceRegistry) {
        let tokens = platforms.filter { !$0.token.isEmpty }.map { ($0.id, "Bearer \($0.token)") }
        // The platform is whichever one's connector token was presented.
        let platform = { @Sendable (context: CallContext) throws -> String in
            guard let presented = context.metadata["authorization"] else {
                throw RPCStatus(.unauthenticated, "ReportAudience needs metadata \"authorization: Bearer <the platform's connector token>\"")
            }
            guard let platformId = tokens.first(where: { StreamKey.equal(presented, $0.1) })?.0 else {
                throw RPCStatus(.unauthenticated,
                    "the authorization metadata is not any platform's connector token (check the token in the platform's config section)")
            }
            context.addLogMetadata("platform", platformId)
            return platformId
        }
        services.bidirectional(AudienceService.reportAudience) { requests, sender, context in
            var it = requests.makeAsyncIterator()
            try await ingest(registry, ingestor, platformId: try platform(context),
                             next: { try await it.next().map { [$0] } },
                             send: { acks in try await sender.send(contentsOf: acks) })
            context.logger.debug("audience stream ended")
        }
        services.bidirectional(AudienceService.reportAudienceBatch) { requests, sender, context in
            var it = requests.makeAsyncIterator()
            // Acks ready together may be more than one frame holds: they go in several answers.
            let budget = max(1024, min(context.maxFrameSize - 64, 1 << 20))
            try await ingest(registry, ingestor, platformId: try platform(context),
                             next: { try await it.next()?.reports },
                             send: { acks in
                                 for part in splitAcks(acks, budget: budget) {
                                     var batch = AudienceAckBatch()
                                     batch.acks = part
                                     try await sender.send(batch)
                                 }
                             })
            context.logger.debug("audience stream ended")
        }
    }

    /// Checks each report, submits the good ones (a message's worth at a time) and sends the
    /// acknowledgements as they become ready, until the input ends and all are acknowledged.
    static func ingest(_ registry: RoomRegistry, _ ingestor: AudienceIngestor, platformId: String,
                       next: () async throws -> [AudienceReport]?,
                       send: @escaping @Sendable ([AudienceAck]) async throws -> Void) async throws {
        let tracker = AckTracker()
        let sink = AckSink { tracker.ack(contentsOf: $0) }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                // Acks ready together go out together: one trip to the event loop, one write.
                while let batch = await tracker.nextBatch() { try await send(batch) }
            }
            var rooms: [String: (RoomActor, String)] = [:]
            var lastRoom: (id: String, room: (RoomActor, String))?
            // A connector that reads no acks stops being read: what waits to be sent stays bounded.
            while await tracker.waitForRoom(limit: maxUnsentAcks), let reports = try await next() {
                var accepted: [(AudienceReport, RoomActor)] = []
                accepted.reserveCapacity(reports.count)
                for report in reports {
                    tracker.expect()
                    if let problem = validate(report) {
                        tracker.ack(AudienceIngestor.ack(report.sequence, .invalidArgument, problem))
                        continue
                    }
                    let room: (RoomActor, String)
                    if let last = lastRoom, last.id == report.roomId {
                        room = last.room
                    } else if let cached = rooms[report.roomId] {
                        room = cached
                    } else {
                        do {
                            let actor = try await registry.room(report.roomId)
                            room = (actor, await actor.snapshot().platformId)
                            rooms[report.roomId] = room
                        } catch let e as RoomError {
                            tracker.ack(AudienceIngestor.ack(report.sequence, e.code, e.message))
                            continue
                        }
                    }
                    guard room.1 == platformId else {
                        tracker.ack(AudienceIngestor.ack(report.sequence, .permissionDenied,
                            "room \(report.roomId) is on platform \(room.1); connector of \(platformId) may not report for it"))
                        continue
                    }
                    lastRoom = (report.roomId, room)
                    accepted.append((report, room.0))
                }
                if !accepted.isEmpty { await ingestor.submit(platformId: platformId, accepted, sink: sink) }
            }
            tracker.inputEnded()
            try await group.waitForAll()
        }
    }

    /// Acks not yet sent (stored or not) after which a stream's next message waits.
    static let maxUnsentAcks = 65_536

    /// Splits acks into runs whose encoding stays within `budget` bytes.
    static func splitAcks(_ acks: [AudienceAck], budget: Int) -> [[AudienceAck]] {
        var parts: [[AudienceAck]] = []
        var current: [AudienceAck] = []
        var size = 0
        for a in acks {
            // Tags and varints at their largest: sequence 11, code 11, duplicate 2, the
            // message 6 + its bytes, the repeated field's own tag and length 6.
            let cost = 36 + a.message.utf8.count
            if size + cost > budget, !current.isEmpty {
                parts.append(current)
                current = []
                size = 0
            }
            current.append(a)
            size += cost
        }
        if !current.isEmpty { parts.append(current) }
        return parts
    }

    /// Why a report makes no sense, or nil.
    static func validate(_ r: AudienceReport) -> String? {
        AudienceLimits.problem(r)
    }
}

/// Collects acknowledgements for the sender, and ends once the input has ended and every
/// report has its acknowledgement.
final class AckTracker: Sendable {
    private struct State {
        var outstanding = 0
        var inputDone = false
        var ready: [AudienceAck] = []
        var waiter: CheckedContinuation<[AudienceAck]?, Never>?
        /// The reader, waiting for unsent acks to drop to half its limit.
        var roomWaiter: (limit: Int, CheckedContinuation<Void, Never>)?
    }

    private let state = Mutex(State())

    func expect() { state.withLock { $0.outstanding += 1 } }

    func ack(_ a: AudienceAck) { ack(contentsOf: [a]) }

    func ack(contentsOf acks: [AudienceAck]) {
        let (wake, reader) = state.withLock { s -> ((CheckedContinuation<[AudienceAck]?, Never>, [AudienceAck])?, CheckedContinuation<Void, Never>?) in
            s.outstanding -= acks.count
            s.ready.append(contentsOf: acks)
            guard let w = s.waiter else { return (nil, nil) }
            s.waiter = nil
            defer { s.ready = [] }
            return ((w, s.ready), Self.takeReader(&s))
        }
        if let (w, batch) = wake { w.resume(returning: batch) }
        reader?.resume()
    }

    /// The waiting reader, if what is unsent (ready about to be handed over) is down to half its limit.
    private static func takeReader(_ s: inout State) -> CheckedContinuation<Void, Never>? {
        guard let (limit, r) = s.roomWaiter, s.outstanding <= limit / 2 else { return nil }
        s.roomWaiter = nil
        return r
    }

    func inputEnded() {
        let wake = state.withLock { s -> CheckedContinuation<[AudienceAck]?, Never>? in
            s.inputDone = true
            guard s.outstanding == 0, s.ready.isEmpty, let w = s.waiter else { return nil }
            s.waiter = nil
            return w
        }
        wake?.resume(returning: nil)
    }

    /// Everything acknowledged since the last call; nil when all is done.
    func nextBatch() async -> [AudienceAck]? {
        await withCheckedContinuation { (c: CheckedContinuation<[AudienceAck]?, Never>) in
            let (now, reader) = state.withLock { s -> ([AudienceAck]??, CheckedContinuation<Void, Never>?) in
                if !s.ready.isEmpty {
                    defer { s.ready = [] }
                    return (.some(s.ready), Self.takeReader(&s))
                }
                if s.inputDone && s.outstanding == 0 { return (.some(nil), nil) }
                s.waiter = c
                return (nil, nil)
            }
            reader?.resume()
            if let now { c.resume(returning: now) }
        }
    }

    /// Returns (true) once fewer than `limit` acks are waiting to be sent; waits otherwise.
    func waitForRoom(limit: Int) async -> Bool {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.outstanding + s.ready.count < limit { return true }
                s.roomWaiter = (limit, c)
                return false
            }
            if now { c.resume() }
        }
        return true
    }
}
