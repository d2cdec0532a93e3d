import LiveRoomRTMP
import NIOCore

/// What a demuxer finds in a room's byte stream, whatever the container.
public enum Demuxed: Sendable {
    /// A new publisher's stream begins: a new timeline.
    case streamStart
    case video(AVCConfig)
    case audio(AACConfig)
    /// A coded frame: timestamps in 90 kHz ticks.
    case frame(Frame)
}

/// One coded frame as a demuxer reads it.
public struct Frame: Sendable {
    public var track: Sample.Track
    public var dts: Int64
    public var compositionOffset: Int32
    public var sync: Bool
    public var data: ByteBuffer

    public init(track: Sample.Track, dts: Int64, compositionOffset: Int32 = 0, sync: Bool, data: ByteBuffer) {
        self.track = track
        self.dts = dts
        self.compositionOffset = compositionOffset
        self.sync = sync
        self.data = data
    }
}

/// Reads H.264 and AAC out of FLV tags (as RTMP ingest and FLV StreamData make them).
public struct FLVDemuxer: Sendable {
    private var reader = FLVTagReader()
    /// Extended timestamps wrap at 2^32 ms; unwrapped so decode times only grow.
    private var lastTimestamp: UInt32?
    private var wraps: Int64 = 0

    public init() {}

    /// Everything complete in `bytes` (and what was pending); throws `UnsupportedMedia` for
    /// codecs this remuxer does not carry, or bytes that are not FLV.
    public mutating func feed(_ bytes: ByteBuffer) throws -> [Demuxed] {
        reader.feed(bytes)
        var out: [Demuxed] = []
        while true {
            let item: FLVTagReader.Item?
            do { item = try reader.next() } catch { throw UnsupportedMedia("the stream is not valid FLV: \(error)") }
            guard let item else { return out }
            switch item {
            case .streamStart:
                lastTimestamp = nil
                wraps = 0
                out.append(.streamStart)
            case .tag(let tag):
                if let d = try demux(tag) { out.append(d) }
            }
        }
    }

    private mutating func demux(_ tag: FLVTag) throws -> Demuxed? {
        var data = tag.data
        guard tag.type != FLVTag.script, let b0 = data.readInteger(as: UInt8.self) else { return nil }
        if let last = lastTimestamp, tag.timestamp < last, last - tag.timestamp > 1 << 31 { wraps &+= 1 }
        lastTimestamp = tag.timestamp
        let dts = (Int64(tag.timestamp) &+ (wraps &<< 32)) &* 90
        if tag.type == FLVTag.video {
            if b0 & 0x80 != 0 { throw UnsupportedMedia("the video is enhanced-RTMP (HEVC, AV1 or VP9): only H.264 remuxes to MP4 and HLS here") }
            let codec = b0 & 0x0F
            guard codec == 7 else { throw UnsupportedMedia("the video codec is FLV codec id \(codec): only H.264 (7) remuxes to MP4 and HLS here") }
            guard let packetType = data.readInteger(as: UInt8.self), let ctoBytes = data.readBytes(length: 3) else { return nil }
            let raw = Int32(ctoBytes[0]) << 16 | Int32(ctoBytes[1]) << 8 | Int32(ctoBytes[2])
            let cto = (raw << 8) >> 8  // sign-extend 24 bits
            switch packetType {
            case 0: return .video(try AVCConfig(record: Array(data.readableBytesView)))
            case 1:
                guard data.readableBytes > 0 else { return nil }
                return .frame(Frame(track: .video, dts: dts, compositionOffset: cto * 90, sync: (b0 >> 4) == 1, data: data))
            default: return nil  // end of sequence
            }
        }
        let format = b0 >> 4
        guard format == 10 else { throw UnsupportedMedia("the audio is FLV sound format \(format): only AAC (10) remuxes to MP4 and HLS here") }
        guard let packetType = data.readInteger(as: UInt8.self) else { return nil }
        if packetType == 0 { return .audio(try AACConfig(specificConfig: Array(data.readableBytesView))) }
        guard data.readableBytes > 0 else { return nil }
        return .frame(Frame(track: .audio, dts: dts, sync: true, data: data))
    }
}
