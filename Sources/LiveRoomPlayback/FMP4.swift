import NIOCore

/// The tracks of a stream, as its init segment declares them.
public struct TrackSet: Equatable, Sendable {
    public var video: AVCConfig?
    public var audio: AACConfig?

    public init(video: AVCConfig? = nil, audio: AACConfig? = nil) {
        self.video = video
        self.audio = audio
    }

    public var isEmpty: Bool { video == nil && audio == nil }

    /// RFC 6381 codecs, e.g. `avc1.64001f,mp4a.40.2`.
    public var codecs: String { [video?.codecString, audio?.codecString].compactMap { $0 }.joined(separator: ",") }

    /// The MIME type a Media Source Extensions buffer is created with.
    public var mimeType: String { "\(video == nil ? "audio" : "video")/mp4; codecs=\"\(codecs)\"" }
}

/// One coded frame, in its track's timescale.
public struct Sample: Sendable {
    public enum Track: Sendable { case video, audio }
    public var track: Track
    public var dts: Int64
    public var duration: UInt32
    public var compositionOffset: Int32
    public var sync: Bool
    /// Video: length-prefixed NAL units (as in FLV and MP4). Audio: one raw AAC frame.
    public var data: ByteBuffer

    public init(track: Track, dts: Int64, duration: UInt32 = 0, compositionOffset: Int32 = 0, sync: Bool, data: ByteBuffer) {
        self.track = track
        self.dts = dts
        self.duration = duration
        self.compositionOffset = compositionOffset
        self.sync = sync
        self.data = data
    }
}

/// Fragmented MP4 (ISO/IEC 14496-12, CMAF-shaped): an init segment, then fragments.
public enum FMP4 {
    public static let videoTimescale: UInt32 = 90_000
    static let videoTrack: UInt32 = 1
    static let audioTrack: UInt32 = 2

    /// `ftyp` and `moov`: what a player needs before any fragment.
    public static func initSegment(_ tracks: TrackSet) -> ByteBuffer {
        var w = BoxWriter()
        w.box("ftyp") { w in
            w.bytes(Array("iso6".utf8))
            w.u32(0)
            for brand in ["iso6", "cmfc", "isom", "mp41"] { w.bytes(Array(brand.utf8)) }
        }
        w.box("moov") { w in
            w.fullBox("mvhd") { w in
                w.u32(0); w.u32(0)  // creation, modification
                w.u32(1000); w.u32(0)  // timescale, duration (unknown: live)
                w.u32(0x0001_0000); w.u16(0x0100); w.zeros(10)  // rate, volume, reserved
                for m in unityMatrix { w.u32(m) }
                w.zeros(24)
                w.u32(3)  // next track id
            }
            if let video = tracks.video { videoTrak(&w, video) }
            if let audio = tracks.audio { audioTrak(&w, audio) }
            w.box("mvex") { w in
                for id in [tracks.video.map { _ in videoTrack }, tracks.audio.map { _ in audioTrack }].compactMap({ $0 }) {
                    w.fullBox("trex") { w in
                        w.u32(id); w.u32(1); w.u32(0); w.u32(0); w.u32(0)
                    }
                }
            }
        }
        return w.buffer
    }

    private static func trak(_ w: inout BoxWriter, id: UInt32, width: Int, height: Int, audio: Bool, timescale: UInt32,
                             sampleEntry: (inout BoxWriter) -> Void) {
        w.box("trak") { w in
            w.fullBox("tkhd", flags: 3) { w in
                w.u32(0); w.u32(0); w.u32(id); w.u32(0); w.u32(0)  // times, id, reserved, duration
                w.zeros(8)
                w.u16(0); w.u16(audio ? 1 : 0)  // layer, alternate group
                w.u16(audio ? 0x0100 : 0); w.u16(0)  // volume
                for m in unityMatrix { w.u32(m) }
                w.u32(UInt32(width) << 16); w.u32(UInt32(height) << 16)
            }
            w.box("mdia") { w in
                w.fullBox("mdhd") { w in
                    w.u32(0); w.u32(0); w.u32(timescale); w.u32(0)
                    w.u16(0x55C4)  // "und"
                    w.u16(0)
                }
                w.fullBox("hdlr") { w in
                    w.u32(0)
                    w.bytes(Array((audio ? "soun" : "vide").utf8))
                    w.zeros(12)
                    w.bytes(Array((audio ? "SoundHandler" : "VideoHandler").utf8) + [0])
                }
                w.box("minf") { w in
                    if audio {
                        w.fullBox("smhd") { w in w.u32(0) }
                    } else {
                        w.fullBox("vmhd", flags: 1) { w in w.zeros(8) }
                    }
                    w.box("dinf") { w in
                        w.fullBox("dref") { w in
                            w.u32(1)
                            w.fullBox("url ", flags: 1) { _ in }
                        }
                    }
                    w.box("stbl") { w in
                        w.fullBox("stsd") { w in
                            w.u32(1)
                            sampleEntry(&w)
                        }
                        for empty in ["stts", "stsc", "stco"] { w.fullBox(empty) { w in w.u32(0) } }
                        w.fullBox("stsz") { w in w.u32(0); w.u32(0) }
                    }
                }
            }
        }
    }

    private static func videoTrak(_ w: inout BoxWriter, _ c: AVCConfig) {
        trak(&w, id: videoTrack, width: c.width, height: c.height, audio: false, timescale: videoTimescale) { w in
            w.box("avc1") { w in
                w.zeros(6); w.u16(1)  // reserved, data reference index
                w.zeros(16)
                w.u16(UInt16(c.width)); w.u16(UInt16(c.height))
                w.u32(0x0048_0000); w.u32(0x0048_0000)  // 72 dpi
                w.u32(0); w.u16(1)  // reserved, frame count
                w.zeros(32)  // compressor name
                w.u16(0x0018); w.u16(0xFFFF)
                w.box("avcC") { w in w.bytes(c.record) }
            }
        }
    }

    private static func audioTrak(_ w: inout BoxWriter, _ c: AACConfig) {
        trak(&w, id: audioTrack, width: 0, height: 0, audio: true, timescale: UInt32(c.sampleRate)) { w in
            w.box("mp4a") { w in
                w.zeros(6); w.u16(1)
                w.zeros(8)
                w.u16(UInt16(max(c.channels, 1))); w.u16(16)
                w.u16(0); w.u16(0)
                w.u32(UInt32(min(c.sampleRate, 65535)) << 16)
                w.fullBox("esds") { w in
                    let asc = c.specificConfig
                    // ES_Descriptor > DecoderConfigDescriptor > DecoderSpecificInfo, SLConfigDescriptor.
                    let decoderSpecific: [UInt8] = [0x05, UInt8(asc.count)] + asc
                    let decoderConfig: [UInt8] = [0x04, UInt8(13 + decoderSpecific.count), 0x40, 0x15, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
                        + decoderSpecific
                    let sl: [UInt8] = [0x06, 1, 0x02]
                    w.bytes([0x03, UInt8(3 + decoderConfig.count + sl.count), 0, 0, 0] + decoderConfig + sl)
                }
            }
        }
    }

    /// One fragment: `moof` and `mdat` for the samples of each track (either may be empty).
    public static func fragment(sequence: UInt32, video: [Sample], audio: [Sample]) -> ByteBuffer {
        let tracks = [(videoTrack, video), (audioTrack, audio)].filter { !$0.1.isEmpty }
        var w = BoxWriter(capacity: 256 + (video + audio).reduce(0) { $0 + $1.data.readableBytes })
        var offsetFields: [Int] = []
        w.box("moof") { w in
            w.fullBox("mfhd") { w in w.u32(sequence) }
            for (id, samples) in tracks {
                w.box("traf") { w in
                    w.fullBox("tfhd", flags: 0x02_0000) { w in w.u32(id) }  // default-base-is-moof
                    w.fullBox("tfdt", version: 1) { w in w.u64(UInt64(max(0, samples[0].dts))) }
                    // data offset, duration, size, flags, composition offset per sample
                    w.fullBox("trun", version: 1, flags: 0x000F01) { w in
                        w.u32(UInt32(samples.count))
                        offsetFields.append(w.buffer.writerIndex)
                        w.i32(0)
                        for s in samples {
                            w.u32(s.duration)
                            w.u32(UInt32(s.data.readableBytes))
                            w.u32(s.sync ? 0x0200_0000 : 0x0101_0000)
                            w.i32(s.compositionOffset)
                        }
                    }
                }
            }
        }
        let moofSize = w.buffer.writerIndex
        var dataOffset = moofSize + 8
        for (i, (_, samples)) in tracks.enumerated() {
            w.buffer.setInteger(Int32(dataOffset), at: offsetFields[i])
            dataOffset += samples.reduce(0) { $0 + $1.data.readableBytes }
        }
        w.box("mdat") { w in
            for (_, samples) in tracks { for s in samples { w.buffer(s.data) } }
        }
        return w.buffer
    }
}
