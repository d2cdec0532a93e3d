import CoreMetrics

/// The domain's metrics, made from the factory the daemon chooses (Prometheus, or no-ops).
/// Passed in rather than bootstrapped globally, so tests and several daemons in one process
/// keep their figures apart.
public struct RoomMetrics: Sendable {
    public let factory: any MetricsFactory
    /// Media payload bytes published into rooms, and handed to viewers.
    public let bytesIn: CoreMetrics.Counter
    public let bytesOut: CoreMetrics.Counter
    /// Chunks a slow viewer never got (skipped to the next keyframe, or disconnected).
    public let chunksDropped: CoreMetrics.Counter
    public let viewersOnline: Meter
    public let reportsIngested: CoreMetrics.Counter
    public let reportsDuplicate: CoreMetrics.Counter

    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        self.factory = factory
        bytesIn = .init(label: "liveroom_media_bytes_in_total", factory: factory)
        bytesOut = .init(label: "liveroom_media_bytes_out_total", factory: factory)
        chunksDropped = .init(label: "liveroom_media_chunks_dropped_total", factory: factory)
        viewersOnline = .init(label: "liveroom_viewers_online", factory: factory)
        reportsIngested = .init(label: "liveroom_audience_reports_ingested_total", factory: factory)
        reportsDuplicate = .init(label: "liveroom_audience_reports_duplicate_total", factory: factory)
    }

    /// Failed calls to a platform's connector.
    public func connectorError(platform: String) -> CoreMetrics.Counter {
        .init(label: "liveroom_connector_errors_total", dimensions: [("platform", platform)], factory: factory)
    }
}
