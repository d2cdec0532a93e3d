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

/// Where platform audience reports are kept.
public protocol AudienceStore: Sendable {
    /// Stores in one durable transaction; returns, per report, false if it was already stored.
    func insertReports(_ reports: [StoredReport]) async throws -> [Bool]
    func loadReports(roomId: String) async throws -> [StoredReport]
    /// Sequences stored for a connector at or above `from`, and the highest one.
    func sequences(platformId: String, connectorId: String, from: UInt64) async throws -> (seen: Set<UInt64>, highest: UInt64?)
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
        p.reports += 1
        Self.accumulate(r.report, &p.newViewers, &p.comments, &p.likes, &p.interactions, &p.gifts, &p.itemsSold, &p.sales)
        platforms[r.platformId] = p

        let minute = r.receivedAtMs / 60_000 * 60_000
        let key = "\(r.platformId)/\(minute)"
        var m = minutes[key] ?? {
            var n = AudienceMinute()
            n.minuteStartMs = minute
            n.platformId = r.platformId
            return n
        }()
        m.viewersOnline = r.report.viewersOnline
        Self.accumulate(r.report, &m.newViewers, &m.comments, &m.likes, &m.interactions, &m.gifts, &m.itemsSold, &m.sales)
        minutes[key] = m
    }

    /// Adds a report's increments to a set of totals.
    private static func accumulate(_ r: AudienceReport, _ newViewers: inout Int64, _ comments: inout Int64, _ likes: inout Int64,
                                   _ interactions: inout Int64, _ gifts: inout Int64, _ itemsSold: inout Int64, _ sales: inout Money?) {
        newViewers += r.newViewers
        comments += r.comments
        likes += r.likes
        interactions += r.interactions
        gifts += r.gifts
        itemsSold += r.itemsSold
        if let s = r.sales, s.minorUnits != 0 || !s.currency.isEmpty {
            var total = sales ?? Money()
            total.currency = s.currency
            total.minorUnits += s.minorUnits
            sales = total
        }
    }

    /// Sums over platforms (sales only when all platforms use one currency).
    public var allPlatforms: PlatformAudience {
        var all = PlatformAudience()
        all.platformId = "*"
        var currencies = Set<String>()
        for p in platforms.values {
            all.viewersOnline += p.viewersOnline
            all.peakViewersOnline += p.peakViewersOnline
            all.newViewers += p.newViewers
            all.comments += p.comments
            all.likes += p.likes
            all.interactions += p.interactions
            all.gifts += p.gifts
            all.itemsSold += p.itemsSold
            all.reports += p.reports
            all.lastReportAtMs = max(all.lastReportAtMs, p.lastReportAtMs)
            if let s = p.sales {
                currencies.insert(s.currency)
                var total = all.sales ?? Money()
                total.currency = s.currency
                total.minorUnits += s.minorUnits
                all.sales = total
            }
        }
        if currencies.count > 1 { all.sales = nil }
        return all
    }
}

extension RoomActor {
    func loadAudience() async throws {
        guard !audienceLoaded else { return }
        let stored = try await audienceStore.loadReports(roomId: id)
        guard !audienceLoaded else { return }
        audienceLoaded = true
        var fresh = AudienceAggregate()
        for r in stored { fresh.add(r) }
        // Reports applied while loading are in `stored` already (they are stored before applied).
        audience = fresh
    }

    /// Adds reports that were just stored.
    public func applyAudience(_ reports: [StoredReport]) async {
        guard audienceLoaded else { return }  // loading later reads them from the store
        for r in reports { audience.add(r) }
    }

    public func audienceStats() async throws -> AudienceAggregate {
        try await loadAudience()
        return audience
    }
}
