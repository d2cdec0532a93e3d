import LiveRoomMessages

/// One connector report as stored: the dedupe key is (platform, connector, sequence).
public struct StoredReport: Sendable, Equatable {
    public var platformId: String
    public var connectorId: String
    public var sequence: UInt64
    public var roomId: String
    /// The daemon's clock when the report arrived: per-minute buckets use it.
    public var receivedAtMs: Int64
    public var report: AudienceReport

    public init(platformId: String, connectorId: String, sequence: UInt64, roomId: String, receivedAtMs: Int64, report: AudienceReport) {
        self.platformId = platformId
        self.connectorId = connectorId
        self.sequence = sequence
        self.roomId = roomId
        self.receivedAtMs = receivedAtMs
        self.report = report
    }
}

/// A room's stored reports as one read saw them.
public struct StoredReports: Sendable {
    public var reports: [StoredReport]
    /// The highest commit mark the read included (0: none).
    public var mark: Int64
    public init(reports: [StoredReport], mark: Int64) {
        self.reports = reports
        self.mark = mark
    }
}

/// Where platform audience reports are kept.
public protocol AudienceStore: Sendable {
    /// Stores in one durable transaction and returns its commit mark: a number greater than
    /// every earlier transaction's, and at most the mark of any read that includes this one.
    func insertReports(_ reports: [StoredReport]) async throws -> Int64
    func loadReports(roomId: String) async throws -> StoredReports
    /// Sequences stored for a connector at or above `from`, and the highest one.
    func sequences(platformId: String, connectorId: String, from: UInt64) async throws -> (seen: Set<UInt64>, highest: UInt64?)
}

/// Adds without trapping: a total that would pass `Int64.max` stays there. Reports are bounded
/// at the edge (`AudienceLimits`), so only a very long stream of maximal reports reaches it.
@inline(__always)
public func saturating(_ a: Int64, _ b: Int64) -> Int64 {
    let (sum, overflow) = a.addingReportingOverflow(b)
    return overflow ? (b > 0 ? .max : .min) : sum
}

/// Totals of money kept per currency: 10000 CNY and 5 USD are two totals, never 10005 of either.
public struct CurrencyTotals: Sendable, Equatable {
    /// Kept sorted by currency code; a room sees few currencies.
    public private(set) var totals: [Money] = []

    public init() {}

    public mutating func add(_ m: Money) {
        if let i = totals.firstIndex(where: { $0.currency == m.currency }) {
            totals[i].minorUnits = saturating(totals[i].minorUnits, m.minorUnits)
        } else {
            totals.append(m)
            totals.sort { $0.currency < $1.currency }
        }
    }

    public mutating func add(_ other: CurrencyTotals) { for m in other.totals { add(m) } }

    /// The one total when every sale was in one currency, else nil (the list says it all).
    public var single: Money? { totals.count == 1 ? totals[0] : nil }
}

/// A room's platform audience: per platform the current value, peak and totals, and a
/// per-minute series. Built only from stored reports, so it is the same after a restart.
public struct AudienceAggregate: Sendable {
    public var platforms: [String: PlatformAudience] = [:]
    public var minutes: [String: AudienceMinute] = [:]  // "platform/minute"
    private var lastReportAt: [String: Int64] = [:]

    public init() {}

    public mutating func add(_ r: StoredReport) {
        var p = platforms[r.platformId] ?? {
            var n = PlatformAudience()
            n.platformId = r.platformId
            return n
        }()
        let at = r.report.reportedAtMs > 0 ? r.report.reportedAtMs : r.receivedAtMs
        if at >= (lastReportAt[r.platformId] ?? .min) {
            p.viewersOnline = r.report.viewersOnline
            lastReportAt[r.platformId] = at
            p.lastReportAtMs = at
        }
        p.peakViewersOnline = max(p.peakViewersOnline, r.report.viewersOnline)
        p.reports = saturating(p.reports, 1)
        Self.accumulate(r.report, &p.newViewers, &p.comments, &p.likes, &p.interactions, &p.gifts, &p.itemsSold, &p.salesByCurrency)
        p.sales = Self.single(p.salesByCurrency)
        platforms[r.platformId] = p

        // Floor division: a negative arrival time (a clock before 1970) still has a minute.
        let minute = r.receivedAtMs - ((r.receivedAtMs % 60_000) + 60_000) % 60_000
        let key = "\(r.platformId)/\(minute)"
        var m = minutes[key] ?? {
            var n = AudienceMinute()
            n.minuteStartMs = minute
            n.platformId = r.platformId
            return n
        }()
        m.viewersOnline = r.report.viewersOnline
        Self.accumulate(r.report, &m.newViewers, &m.comments, &m.likes, &m.interactions, &m.gifts, &m.itemsSold, &m.salesByCurrency)
        m.sales = Self.single(m.salesByCurrency)
        minutes[key] = m
    }

    /// Adds a report's increments to a set of totals.
    private static func accumulate(_ r: AudienceReport, _ newViewers: inout Int64, _ comments: inout Int64, _ likes: inout Int64,
                                   _ interactions: inout Int64, _ gifts: inout Int64, _ itemsSold: inout Int64, _ sales: inout [Money]) {
        newViewers = saturating(newViewers, r.newViewers)
        comments = saturating(comments, r.comments)
        likes = saturating(likes, r.likes)
        interactions = saturating(interactions, r.interactions)
        gifts = saturating(gifts, r.gifts)
        itemsSold = saturating(itemsSold, r.itemsSold)
        if let s = r.sales, s.minorUnits != 0 || !s.currency.isEmpty {
            var totals = CurrencyTotals(sales)
            totals.add(s)
            sales = totals.totals
        }
    }

    private static func single(_ totals: [Money]) -> Money? { totals.count == 1 ? totals[0] : nil }

    /// Sums over platforms; sales per currency (and `sales` only when there is one currency).
    public var allPlatforms: PlatformAudience {
        var all = PlatformAudience()
        all.platformId = "*"
        var sales = CurrencyTotals()
        for p in platforms.values {
            all.viewersOnline = saturating(all.viewersOnline, p.viewersOnline)
            all.peakViewersOnline = saturating(all.peakViewersOnline, p.peakViewersOnline)
            all.newViewers = saturating(all.newViewers, p.newViewers)
            all.comments = saturating(all.comments, p.comments)
            all.likes = saturating(all.likes, p.likes)
            all.interactions = saturating(all.interactions, p.interactions)
            all.gifts = saturating(all.gifts, p.gifts)
            all.itemsSold = saturating(all.itemsSold, p.itemsSold)
            all.reports = saturating(all.reports, p.reports)
            all.lastReportAtMs = max(all.lastReportAtMs, p.lastReportAtMs)
            for m in p.salesByCurrency { sales.add(m) }
        }
        all.salesByCurrency = sales.totals
        all.sales = sales.single
        return all
    }
}

extension CurrencyTotals {
    init(_ sorted: [Money]) { totals = sorted }
}

/// The bounds of one connector report: each increment is a plausible amount, so that totals
/// need millions of maximal reports to reach `Int64.max` (where they stay, see `saturating`).
public enum AudienceLimits {
    public static let maxCount: Int64 = 1_000_000_000_000
    public static let maxSalesMinorUnits: Int64 = 1_000_000_000_000_000
    /// Stored as SQLite's signed integers, so sequences are kept below 2^63.
    public static let maxSequence: UInt64 = UInt64(Int64.max)
    /// 9999-12-31T23:59:59.999Z.
    public static let maxTimestampMs: Int64 = 253_402_300_799_999
    public static let maxIdBytes = 256

    /// Why a report cannot be taken, or nil.
    public static func problem(_ r: AudienceReport) -> String? {
        if r.connectorId.isEmpty { return "connector_id is required" }
        if r.connectorId.utf8.count > maxIdBytes { return "connector_id is \(r.connectorId.utf8.count) bytes; at most \(maxIdBytes)" }
        if r.sequence == 0 { return "sequence starts at 1" }
        if r.sequence > maxSequence { return "sequence \(r.sequence) is too large: sequences must be below 2^63" }
        if r.roomId.isEmpty { return "room_id is required" }
        if r.roomId.utf8.count > maxIdBytes { return "room_id is \(r.roomId.utf8.count) bytes; at most \(maxIdBytes)" }
        if r.reportedAtMs < 0 || r.reportedAtMs > maxTimestampMs {
            return "reported_at_ms must be unix milliseconds between 0 and \(maxTimestampMs), got \(r.reportedAtMs)"
        }
        // The common case (every count in range) is checked without building anything: this
        // runs for every report, hundreds of thousands a second.
        func out(_ v: Int64) -> Bool { v < 0 || v > maxCount }
        if out(r.viewersOnline) || out(r.newViewers) || out(r.comments) || out(r.likes) || out(r.interactions) || out(r.gifts)
            || out(r.itemsSold)
        {
            let all = [r.viewersOnline, r.newViewers, r.comments, r.likes, r.interactions, r.gifts, r.itemsSold]
            let names = ["viewers_online", "new_viewers", "comments", "likes", "interactions", "gifts", "items_sold"]
            for (name, v) in zip(names, all) {
                if v < 0 { return "\(name) must not be negative, got \(v)" }
                if v > maxCount { return "\(name) is \(v); one report may add at most \(maxCount)" }
            }
        }
        if let s = r.sales {
            if s.minorUnits < 0 { return "sales must not be negative" }
            if s.minorUnits > maxSalesMinorUnits { return "sales.minor_units is \(s.minorUnits); one report may add at most \(maxSalesMinorUnits)" }
            if s.minorUnits > 0 && (s.currency.utf8.count != 3 || !s.currency.utf8.allSatisfy({ $0 >= 65 && $0 <= 90 })) {
                return "sales.currency must be an ISO 4217 code like CNY, got \"\(s.currency.prefix(16))\""
            }
        }
        return nil
    }
}

extension RoomActor {
    /// Loads the room's stored reports once, however many callers ask at the same time. Each
    /// flush of reports carries its store's commit mark, and a load reads up to a mark: a flush
    /// is added after the load exactly when the load's read did not include it, however the
    /// flush and the read overlapped.
    func loadAudience() async throws {
        if audienceLoaded { return }
        if let loading = audienceLoading {
            try await loading.value
            return
        }
        let store = audienceStore
        let roomId = id
        let waiting = Task<Void, Error> {
            let stored = try await store.loadReports(roomId: roomId)
            self.finishLoading(stored)
        }
        audienceLoading = waiting
        do {
            try await waiting.value
        } catch {
            audienceLoading = nil
            audienceHeldBack = []
            throw error
        }
    }

    private func finishLoading(_ stored: StoredReports) {
        guard !audienceLoaded else { return }
        var fresh = AudienceAggregate()
        for r in stored.reports { fresh.add(r) }
        for (mark, reports) in audienceHeldBack where mark > stored.mark {
            for r in reports { fresh.add(r) }
        }
        audienceHeldBack = []
        audience = fresh
        audienceMark = stored.mark
        audienceLoaded = true
        audienceLoading = nil
    }

    /// Adds reports that were just stored with commit mark `mark`.
    public func applyAudience(_ reports: [StoredReport], mark: Int64) async {
        if audienceLoaded {
            guard mark > audienceMark else { return }  // the load read them already
            for r in reports { audience.add(r) }
        } else if audienceLoading != nil {
            audienceHeldBack.append((mark, reports))
        }
        // Neither: nobody asked yet, and the first load reads them from the store.
    }

    public func audienceStats() async throws -> AudienceAggregate {
        try await loadAudience()
        return audience
    }
}
