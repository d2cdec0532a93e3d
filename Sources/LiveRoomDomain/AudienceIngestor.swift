import LiveRoomMessages

/// Takes connector reports, stores them in batches (one transaction for many reports) and
/// acknowledges each only once it is durable. Duplicates, recognised by
/// (platform, connector, sequence), are acknowledged as such and counted once, so a connector
/// that resends everything unacknowledged after a reconnect gets exact statistics.
public actor AudienceIngestor {
    /// Sequences this far below a connector's highest cannot be told from duplicates anymore.
    public static let window: UInt64 = 1_000_000

    struct Connector {
        var seen: Set<UInt64>
        var highest: UInt64
        /// Admitted and not yet durable, with the sinks of resends that arrived meanwhile: a
        /// resend is told "already counted" only once its first copy is stored, and is told
        /// the first copy's failure otherwise.
        var inFlight: [UInt64: [AckSink]] = [:]
    }

    struct Pending {
        var report: StoredReport
        var room: RoomActor
        var sink: AckSink
    }

    private let store: AudienceStore
    private let clock: WallClock
    private let maxBatch: Int
    private struct ConnectorKey: Hashable {
        var platform: String
        var connector: String
    }

    private var connectors: [ConnectorKey: Connector] = [:]
    private var pending: [Pending] = []
    private var flushScheduled = false

    private let metrics: RoomMetrics

    public init(store: AudienceStore, clock: WallClock, maxBatch: Int = 4096, metrics: RoomMetrics = RoomMetrics()) {
        self.store = store
        self.clock = clock
        self.maxBatch = maxBatch
        self.metrics = metrics
    }

    /// Queues validated reports (one trip to this actor for many). Their acknowledgements go
    /// to `sink`, several at a time, each once the report is durable (or with why not).
    public func submit(platformId: String, _ reports: [(AudienceReport, RoomActor)], sink: AckSink) async {
        let now = clock.nowMs()
        var refused: [AudienceAck] = []
        // Reports of one message nearly always come from one connector: its state is taken out
        // of the dictionary once per run (so the set is mutated in place) and put back after.
        var currentKey: ConnectorKey?
        var current: Connector?
        func putBack() {
            if let k = currentKey, let c = current { connectors[k] = c }
            currentKey = nil
            current = nil
        }
        for (report, room) in reports {
            if currentKey?.connector != report.connectorId {
                putBack()
                let key = ConnectorKey(platform: platformId, connector: report.connectorId)
                if connectors[key] == nil {
                    do {
                        let loaded = try await store.sequences(platformId: platformId, connectorId: report.connectorId,
                                                               from: report.sequence > Self.window ? report.sequence - Self.window : 0)
                        if connectors[key] == nil { connectors[key] = Connector(seen: loaded.seen, highest: loaded.highest ?? 0) }
                    } catch {
                        refused.append(Self.ack(report.sequence, .unavailable, "\(error)"))
                        continue
                    }
                }
                currentKey = key
                current = connectors.removeValue(forKey: key)
            }
            let seq = report.sequence
            switch Self.admit(seq, into: &current!) {
            case .tooOld(let highest):
                refused.append(Self.ack(seq, .invalidArgument,
                    "sequence \(seq) is more than \(Self.window) behind the highest (\(highest)): it cannot be told from a duplicate"))
            case .tooFarAhead(let highest):
                refused.append(Self.ack(seq, .invalidArgument,
                    "sequence \(seq) is more than \(Self.window) ahead of the highest (\(highest)); sequences grow by small steps"))
            case .duplicate:
                if current!.inFlight[seq] != nil {
                    current!.inFlight[seq]!.append(sink)
                    continue
                }
                metrics.reportsDuplicate.increment()
                var a = Self.ok(seq, "already counted")
                a.duplicate = true
                refused.append(a)
            case .new:
                current!.inFlight[seq] = []
                let stored = StoredReport(platformId: platformId, connectorId: report.connectorId, sequence: seq, roomId: report.roomId,
                                          receivedAtMs: now, report: report)
                pending.append(Pending(report: stored, room: room, sink: sink))
            }
        }
        putBack()
        if !refused.isEmpty { sink.deliver(refused) }
        if pending.count >= maxBatch {
            await flush()
        } else if !pending.isEmpty && !flushScheduled {
            flushScheduled = true
            Task {
                try? await Task.sleep(for: .milliseconds(2))
                await self.flush()
            }
        }
    }

    enum Admission { case new, duplicate, tooOld(highest: UInt64), tooFarAhead(highest: UInt64) }

    static func admit(_ seq: UInt64, into c: inout Connector) -> Admission {
        if c.highest > window && seq < c.highest - window { return .tooOld(highest: c.highest) }
        // A huge jump would make every later ordinary sequence too old, for good.
        if c.highest > 0 && seq > c.highest && seq - c.highest > window { return .tooFarAhead(highest: c.highest) }
        guard c.seen.insert(seq).inserted else { return .duplicate }
        c.highest = max(c.highest, seq)
        if c.seen.count > Int(window) * 2 {
            let floor = c.highest - window
            c.seen = c.seen.filter { $0 >= floor }
        }
        return .new
    }

    /// Writes what is queued in one transaction, then acknowledges it.
    public func flush() async {
        flushScheduled = false
        guard !pending.isEmpty else { return }
        let batch = pending
        pending = []
        do {
            let mark = try await store.insertReports(batch.map(\.report))
            // Runs of one room (the usual case) are grouped without hashing.
            var byRoom: [(RoomActor, [StoredReport])] = []
            var index: [ObjectIdentifier: Int] = [:]
            for p in batch {
                // Compared in place: binding `byRoom.last` would hold its array and make every
                // append copy it.
                if !byRoom.isEmpty, byRoom[byRoom.count - 1].0 === p.room {
                    byRoom[byRoom.count - 1].1.append(p.report)
                } else if let i = index[ObjectIdentifier(p.room)] {
                    byRoom[i].1.append(p.report)
                } else {
                    index[ObjectIdentifier(p.room)] = byRoom.count
                    byRoom.append((p.room, [p.report]))
                }
            }
            metrics.reportsIngested.increment(by: batch.count)
            for (room, reports) in byRoom { await room.applyAudience(reports, mark: mark) }
            var acks = batch.map { p in (p.sink, Self.ok(p.report.sequence, "")) }
            landed(batch) { report, resends in
                for sink in resends {
                    metrics.reportsDuplicate.increment()
                    var a = Self.ok(report.sequence, "already counted")
                    a.duplicate = true
                    acks.append((sink, a))
                }
            }
            Self.deliver(acks)
        } catch {
            // Not stored: forget the sequences so a resend is taken.
            let why = (error as? RoomError)?.message ?? "\(error)"
            var acks: [(AckSink, AudienceAck)] = []
            landed(batch, stored: false) { report, resends in
                let refusal = Self.ack(report.sequence, .unavailable, why)
                for sink in resends { acks.append((sink, refusal)) }
            }
            acks.insert(contentsOf: batch.map { ($0.sink, Self.ack($0.report.sequence, .unavailable, why)) }, at: 0)
            Self.deliver(acks)
        }
    }

    /// Ends the flight of a written batch: each report with the resends that waited on it.
    /// Not stored: its sequence is forgotten too, so a resend is taken. Runs of one connector
    /// (the usual case) take its state out once.
    private func landed(_ batch: [Pending], stored: Bool = true, _ each: (StoredReport, [AckSink]) -> Void) {
        var i = 0
        while i < batch.count {
            let key = ConnectorKey(platform: batch[i].report.platformId, connector: batch[i].report.connectorId)
            guard var c = connectors.removeValue(forKey: key) else { i += 1; continue }
            while i < batch.count, batch[i].report.connectorId == key.connector, batch[i].report.platformId == key.platform {
                let r = batch[i].report
                if !stored { c.seen.remove(r.sequence) }
                if let resends = c.inFlight.removeValue(forKey: r.sequence), !resends.isEmpty { each(r, resends) }
                i += 1
            }
            connectors[key] = c
        }
    }

    /// Hands each sink its acknowledgements in one call (runs of the same sink are grouped).
    static func deliver(_ acks: [(AckSink, AudienceAck)]) {
        var i = 0
        while i < acks.count {
            let sink = acks[i].0
            var run: [AudienceAck] = []
            while i < acks.count, acks[i].0 === sink {
                run.append(acks[i].1)
                i += 1
            }
            sink.deliver(run)
        }
    }

    /// An acknowledgement that the report is counted (code 0).
    static func ok(_ sequence: UInt64, _ message: String) -> AudienceAck {
        var a = AudienceAck()
        a.sequence = sequence
        a.message = message
        return a
    }

    /// A refusal of one report, with the status code it would have as a call.
    public static func ack(_ sequence: UInt64, _ code: RoomError.Code, _ message: String) -> AudienceAck {
        var a = AudienceAck()
        a.sequence = sequence
        a.code = statusNumber(code)
        a.message = message
        return a
    }

    /// gRPC status numbers, for acks (which carry a code per report).
    public static func statusNumber(_ code: RoomError.Code) -> Int32 {
        switch code {
        case .invalidArgument: return 3
        case .deadlineExceeded: return 4
        case .notFound: return 5
        case .alreadyExists: return 6
        case .permissionDenied: return 7
        case .resourceExhausted: return 8
        case .failedPrecondition: return 9
        case .aborted: return 10
        case .internal: return 13
        case .unavailable: return 14
        }
    }
}

/// Where a connector stream's acknowledgements go, several at a time.
public final class AckSink: Sendable {
    public let deliver: @Sendable ([AudienceAck]) -> Void
    public init(_ deliver: @escaping @Sendable ([AudienceAck]) -> Void) { self.deliver = deliver }
}
