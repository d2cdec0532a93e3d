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
            guard let presented = context.metadata["authorization"],
                let platformId = tokens.first(where: { StreamKey.equal(presented, $0.1) })?.0
            else {
                throw RPCStatus(.unauthenticated, "ReportAudience needs metadata \"authorization: Bearer <the platform's connector token>\"")
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
            try await ingest(registry, ingestor, platformId: try platform(context),
                             next: { try await it.next()?.reports },
                             send: { acks in
                                 var batch = AudienceAckBatch()
                                 batch.acks = acks
                                 try await sender.send(batch)
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
            while let reports = try await next() {
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

    /// Why a report makes no sense, or nil.
    static func validate(_ r: AudienceReport) -> String? {
        if r.connectorId.isEmpty { return "connector_id is required" }
        if r.sequence == 0 { return "sequence starts at 1" }
        if r.roomId.isEmpty { return "room_id is required" }
        // The common case (nothing negative) is checked without building anything.
        if r.viewersOnline < 0 || r.newViewers < 0 || r.comments < 0 || r.likes < 0 || r.interactions < 0 || r.gifts < 0 || r.itemsSold < 0 {
            let counts = [("viewers_online", r.viewersOnline), ("new_viewers", r.newViewers), ("comments", r.comments), ("likes", r.likes),
                          ("interactions", r.interactions), ("gifts", r.gifts), ("items_sold", r.itemsSold)]
            if let negative = counts.first(where: { $0.1 < 0 }) { return "\(negative.0) must not be negative, got \(negative.1)" }
        }
        if let s = r.sales {
            if s.minorUnits < 0 { return "sales must not be negative" }
            if s.minorUnits > 0 && (s.currency.count != 3 || !s.currency.allSatisfy(\.isUppercase)) {
                return "sales.currency must be an ISO 4217 code like CNY, got \"\(s.currency)\""
            }
        }
        return nil
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
    }

    private let state = Mutex(State())

    func expect() { state.withLock { $0.outstanding += 1 } }

    func ack(_ a: AudienceAck) { ack(contentsOf: [a]) }

    func ack(contentsOf acks: [AudienceAck]) {
        let wake = state.withLock { s -> (CheckedContinuation<[AudienceAck]?, Never>, [AudienceAck])? in
            s.outstanding -= acks.count
            s.ready.append(contentsOf: acks)
            guard let w = s.waiter else { return nil }
            s.waiter = nil
            defer { s.ready = [] }
            return (w, s.ready)
        }
        if let (w, batch) = wake { w.resume(returning: batch) }
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
            let now = state.withLock { s -> [AudienceAck]?? in
                if !s.ready.isEmpty {
                    defer { s.ready = [] }
                    return .some(s.ready)
                }
                if s.inputDone && s.outstanding == 0 { return .some(nil) }
                s.waiter = c
                return nil
            }
            if let now { c.resume(returning: now) }
        }
    }
}
