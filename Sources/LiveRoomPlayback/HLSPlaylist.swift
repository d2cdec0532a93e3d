/// Renders a Low-Latency HLS media playlist (RFC 8216bis) for a packager's window. URIs are
/// relative to the playlist: `init-G.mp4`, `seg-MSN.m4s`, `part-MSN.INDEX.m4s`, each after
/// `prefix` and followed by `query` (a viewer's token) when given.
public enum HLSPlaylist {
    /// Parts are listed for segments this recent (the spec asks for at least the last three
    /// target durations); older segments are listed whole.
    static let segmentsWithParts = 3

    public static func render(_ p: Packager, query: String = "", prefix: String = "") -> String {
        let q = query.isEmpty ? "" : "?" + query
        var s = "#EXTM3U\n#EXT-X-VERSION:9\n#EXT-X-INDEPENDENT-SEGMENTS\n"
        s += "#EXT-X-TARGETDURATION:\(p.targetDuration)\n"
        let part = format(p.settings.partTarget)
        s += "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,PART-HOLD-BACK=\(format(p.settings.partTarget * 3))\n"
        s += "#EXT-X-PART-INF:PART-TARGET=\(part)\n"
        s += "#EXT-X-MEDIA-SEQUENCE:\(p.segments.first?.msn ?? 0)\n"
        if p.discontinuitiesDropped > 0 { s += "#EXT-X-DISCONTINUITY-SEQUENCE:\(p.discontinuitiesDropped)\n" }
        var generation: Int?
        let withParts = p.segments.suffix(segmentsWithParts).first?.msn ?? 0
        for segment in p.segments {
            if segment.discontinuity && generation != nil { s += "#EXT-X-DISCONTINUITY\n" }
            if segment.initGeneration != generation {
                s += "#EXT-X-MAP:URI=\"\(prefix)init-\(segment.initGeneration).mp4\(q)\"\n"
                generation = segment.initGeneration
            }
            if segment.msn >= withParts {
                for part in segment.parts {
                    s += "#EXT-X-PART:DURATION=\(format(part.duration)),URI=\"\(prefix)part-\(part.msn).\(part.index).m4s\(q)\""
                    s += part.independent ? ",INDEPENDENT=YES\n" : "\n"
                }
            }
            if segment.complete { s += "#EXTINF:\(format(segment.duration)),\n\(prefix)seg-\(segment.msn).m4s\(q)\n" }
        }
        if !p.segments.isEmpty {
            let next = p.nextPart
            s += "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"\(prefix)part-\(next.msn).\(next.index).m4s\(q)\"\n"
        }
        return s
    }

    static func format(_ seconds: Double) -> String {
        // Durations come from a publisher's timestamps: never negative or absurd here.
        let ms = seconds.isFinite ? Int((min(max(seconds, 0), 1e9) * 1000).rounded()) : 0
        let frac = String(ms % 1000)
        return "\(ms / 1000)." + String(repeating: "0", count: 3 - frac.count) + frac
    }
}
