import NIOCore

/// A partial segment (LL-HLS) and, for the MP4 stream, a fragment: one `moof` + `mdat`.
public struct Part: Sendable {
    public let msn: Int
    public let index: Int
    public let data: ByteBuffer
    public let duration: Double
    /// Starts with a video keyframe (or the stream has no video): a player may start here.
    public let independent: Bool
    /// The init segment this part needs.
    public let initGeneration: Int
}

/// A media segment: its parts, once complete, never change.
public struct Segment: Sendable {
    public let msn: Int
    public internal(set) var parts: [Part] = []
    /// The first segment after a new publisher or new codec settings.
    public let discontinuity: Bool
    public let initGeneration: Int
    public internal(set) var complete = false

    public var duration: Double { parts.reduce(0) { $0 + $1.duration } }

    /// The whole segment, as the parts' fragments one after another (a copy: to send it, write
    /// the parts' buffers in turn).
    public var data: ByteBuffer {
        var b = ByteBufferAllocator().buffer(capacity: parts.reduce(0) { $0 + $1.data.readableBytes })
        for p in parts { b.writeImmutableBuffer(p.data) }
        return b
    }
}

/// Cuts a demuxed stream into fMP4 parts and segments for LL-HLS and the MP4 stream. Segments
/// start at video keyframes once `segmentTarget` has passed; parts are cut so that none is
/// longer than `partTarget`. The timeline only grows: a new publisher continues where the last
/// one stopped, as a discontinuity with its own init segment. Keeps a window of segments.
public struct Packager: Sendable {
    public struct Settings: Sendable, Equatable {
        public var segmentTarget = 2.0
        public var partTarget = 0.5
        /// Complete segments kept (and listed).
        public var window = 6
        public init() {}
    }

    /// What `feed` produced, in order.
    public enum Output: Sendable {
        case initSegment(generation: Int, ByteBuffer)
        case part(Part)
        case segmentComplete(msn: Int)
    }

    public let settings: Settings
    public private(set) var tracks = TrackSet()
    public private(set) var inits: [Int: ByteBuffer] = [:]
    public private(set) var generation = 0
    /// Complete segments, oldest first, then the one being filled.
    public private(set) var segments: [Segment] = []
    /// Discontinuities that have left the window (EXT-X-DISCONTINUITY-SEQUENCE).
    public private(set) var discontinuitiesDropped = 0
    /// The longest segment so far, in whole seconds (EXT-X-TARGETDURATION).
    public private(set) var targetDuration: Int

    private var pending = TrackSet()
    private var pendingVideo: Sample?
    private var videoSamples: [Sample] = []
    private var audioSamples: [Sample] = []
    private var partStart: Int64 = 0  // 90 kHz
    private var segmentStart: Int64 = 0
    private var lastVideoDuration: Int64 = 3000
    private var lastVideoDts: Int64 = .min
    private var partBytes = 0
    static let maxTimeline: Int64 = 1 << 44
    /// A part is cut at these sizes whatever the timestamps say (they may stand still).
    static let maxPartSamples = 1000
    static let maxPartBytes = 16 * 1024 * 1024
    /// Added to input decode times (90 kHz) to make the output timeline.
    private var offset: Int64 = 0
    private var rebase = true
    private var endOfTimeline: Int64 = 0
    private var nextAudioDts: Int64?
    private var nextMsn = 0
    private var fragmentSequence: UInt32 = 0
    private var discontinuity = false
    private var waitingForKeyframe = true
    /// Frames held at a stream's start until every track's configuration is known (MPEG-TS
    /// carries them in band, the audio's with its first frame), so the init segment has both.
    private var startup: [Frame] = []
    private var started = false

    public init(settings: Settings = Settings()) {
        self.settings = settings
        self.targetDuration = max(1, Int(settings.segmentTarget.rounded(.up)))
    }

    /// The segment being filled, if any.
    public var current: Segment? { segments.last.flatMap { $0.complete ? nil : $0 } }

    public mutating func feed(_ items: [Demuxed]) -> [Output] {
        var out: [Output] = []
        for item in items {
            switch item {
            case .streamStart:
                finishSegment(&out)
                pending = TrackSet()
                rebase = true
                waitingForKeyframe = true
                started = false
                startup = []
            case .video(let c):
                pending.video = c
            case .audio(let c):
                pending.audio = c
            case .frame(let f):
                add(f, &out)
            }
        }
        return out
    }

    /// Closes what is being filled (the publisher stopped).
    public mutating func finish() -> [Output] {
        var out: [Output] = []
        begin(&out)
        finishSegment(&out)
        rebase = true
        waitingForKeyframe = true
        return out
    }

    private mutating func add(_ f: Frame, _ out: inout [Output]) {
        guard !started else { return place(f, &out) }
        startup.append(f)
        let span = f.dts - startup[0].dts
        if (pending.video != nil && pending.audio != nil) || span >= 90_000 || startup.count > 1000 { begin(&out) }
    }

    /// Places the frames held at the start (see `startup`).
    private mutating func begin(_ out: inout [Output]) {
        guard !started else { return }
        started = true
        let frames = startup
        startup = []
        for f in frames { place(f, &out) }
    }

    private mutating func place(_ f: Frame, _ out: inout [Output]) {
        // A track whose configuration has not come is not in the init segment: skip its frames.
        guard f.track == .video ? pending.video != nil : pending.audio != nil else { return }
        if waitingForKeyframe {
            // Start on a keyframe; audio before the first one waits for nothing but is dropped.
            if pending.video != nil && !(f.track == .video && f.sync) { return }
            waitingForKeyframe = false
        }
        if pending != tracks {
            finishSegment(&out)
            tracks = pending
            generation += 1
            let data = FMP4.initSegment(tracks)
            inits[generation] = data
            inits = inits.filter { $0.key >= (segments.first?.initGeneration ?? generation) }
            out.append(.initSegment(generation: generation, data))
            discontinuity = generation > 1
        }
        if rebase {
            // Continue the timeline one frame after the end of the last publisher's.
            offset = (endOfTimeline == 0 && nextMsn == 0 ? 0 : endOfTimeline + lastVideoDuration) &- f.dts
            if segments.last?.complete == false { finishSegment(&out) }
            discontinuity = discontinuity || nextMsn > 0
            rebase = false
            nextAudioDts = nil
            partStart = f.dts + offset
            segmentStart = partStart
        }
        // Decode times must grow: a publisher's timestamps that go back are held at the last.
        // Wrapping arithmetic and the bound below: timestamps come from a publisher, and no
        // value of theirs may trap (a live timeline of six years is plenty).
        let dts = max(f.dts &+ offset, f.track == .video ? lastVideoDts &+ 1 : 0)
        guard dts >= 0, dts < Self.maxTimeline else { return }
        partBytes += f.data.readableBytes
        switch f.track {
        case .video:
            lastVideoDts = dts
            if var last = pendingVideo {
                var d = dts - last.dts
                if d <= 0 || d > 90_000 * 10 { d = lastVideoDuration }
                lastVideoDuration = d
                last.duration = UInt32(d)
                videoSamples.append(last)
                pendingVideo = nil
                cutIfDue(at: dts, sync: f.sync, frameDuration: d, &out)
            }
            pendingVideo = Sample(track: .video, dts: dts, compositionOffset: f.compositionOffset, sync: f.sync, data: f.data)
            endOfTimeline = max(endOfTimeline, dts)
        case .audio:
            guard let config = tracks.audio else { return }
            let rate = Int64(config.sampleRate)
            var adts = dts * rate / 90_000
            if let next = nextAudioDts, abs(adts - next) <= rate / 20 { adts = next }
            nextAudioDts = adts + 1024
            if tracks.video == nil {
                cutIfDue(at: dts, sync: true, frameDuration: 1024 * 90_000 / rate, &out)
                endOfTimeline = max(endOfTimeline, dts)
                lastVideoDuration = 1024 * 90_000 / rate
            }
            audioSamples.append(Sample(track: .audio, dts: adts, duration: 1024, sync: true, data: f.data))
        }
    }

    /// Before a frame at `dts`: closes the part if the next frame would make it too long, and
    /// the segment too at a keyframe past the segment target.
    private mutating func cutIfDue(at dts: Int64, sync: Bool, frameDuration: Int64, _ out: inout [Output]) {
        let segmentDue = sync && Double(dts - segmentStart) >= settings.segmentTarget * 90_000 - Double(frameDuration) / 2
        let partDue = Double(dts - partStart + frameDuration) > settings.partTarget * 90_000
            || videoSamples.count + audioSamples.count >= Self.maxPartSamples || partBytes >= Self.maxPartBytes
        guard segmentDue || partDue else { return }
        closePart(until: dts, &out)
        if segmentDue {
            finishSegment(&out)
            segmentStart = dts
        }
    }

    private mutating func closePart(until dts: Int64, _ out: inout [Output]) {
        guard !videoSamples.isEmpty || !audioSamples.isEmpty else { return }
        if segments.last?.complete != false {
            segments.append(Segment(msn: nextMsn, discontinuity: discontinuity, initGeneration: generation))
            nextMsn += 1
            discontinuity = false
        }
        fragmentSequence &+= 1
        let data = FMP4.fragment(sequence: fragmentSequence, video: videoSamples, audio: audioSamples)
        let duration = Double(max(0, dts - partStart)) / 90_000
        let independent = videoSamples.first?.sync ?? (tracks.video == nil)
        let i = segments.count - 1
        let part = Part(msn: segments[i].msn, index: segments[i].parts.count, data: data, duration: duration,
                        independent: independent, initGeneration: generation)
        segments[i].parts.append(part)
        out.append(.part(part))
        videoSamples = []
        audioSamples = []
        partBytes = 0
        partStart = dts
    }

    private mutating func finishSegment(_ out: inout [Output]) {
        if var last = pendingVideo {
            last.duration = UInt32(lastVideoDuration)
            videoSamples.append(last)
            pendingVideo = nil
            endOfTimeline = max(endOfTimeline, last.dts + lastVideoDuration)
            closePart(until: last.dts + lastVideoDuration, &out)
        } else if !audioSamples.isEmpty {
            closePart(until: partStart + Int64(audioSamples.count) * lastVideoDuration, &out)
        }
        guard let i = segments.indices.last, !segments[i].complete else { return }
        segments[i].complete = true
        targetDuration = max(targetDuration, Int(segments[i].duration.rounded()))
        out.append(.segmentComplete(msn: segments[i].msn))
        while segments.count > settings.window + 1 {
            if segments.removeFirst().discontinuity { discontinuitiesDropped += 1 }
        }
    }

    /// The segment with this media sequence number, if still in the window.
    public func segment(_ msn: Int) -> Segment? {
        guard let first = segments.first, msn >= first.msn, msn - first.msn < segments.count else { return nil }
        return segments[msn - first.msn]
    }

    /// The next part to come: (msn, index).
    public var nextPart: (msn: Int, index: Int) {
        if let last = segments.last, !last.complete { return (last.msn, last.parts.count) }
        return (nextMsn, 0)
    }
}
