import NIOCore

/// Reads H.264 (Annex B) and AAC (ADTS) out of an MPEG-TS byte stream (ISO/IEC 13818-1):
/// PAT and PMT find the streams, PES packets are reassembled per PID, NAL units become
/// length-prefixed samples and SPS/PPS an `avcC`, ADTS headers an AudioSpecificConfig.
/// A PES is complete when the next one on its PID starts, so each stream's last frame waits
/// for `flush()`.
public struct TSDemuxer: Sendable {
    static let syncByte: UInt8 = 0x47
    static let packetSize = 188

    private var pending = ByteBuffer()
    private var pmtPID: Int?
    private var videoPID: Int?
    private var audioPID: Int?
    private var pes: [Int: ByteBuffer] = [:]
    private var sps: [UInt8]?
    private var pps: [UInt8]?
    private var video: AVCConfig?
    private var audio: AACConfig?
    private var unwrap: [Int: (last: Int64, wraps: Int64)] = [:]

    public init() {}

    public mutating func feed(_ bytes: ByteBuffer) throws -> [Demuxed] {
        var b = bytes
        pending.writeBuffer(&b)
        var out: [Demuxed] = []
        while pending.readableBytes >= Self.packetSize {
            guard let packet = pending.readSlice(length: Self.packetSize) else { break }
            guard packet.getInteger(at: packet.readerIndex, as: UInt8.self) == Self.syncByte else {
                throw UnsupportedMedia("the MPEG-TS stream lost packet sync (a packet does not start with 0x47)")
            }
            try packetArrived(packet, &out)
        }
        pending.discardReadBytes()
        return out
    }

    public mutating func flush() -> [Demuxed] {
        var out: [Demuxed] = []
        for pid in pes.keys.sorted() {
            if let data = pes.removeValue(forKey: pid) { try? pesComplete(pid: pid, data, &out) }
        }
        return out
    }

    private mutating func packetArrived(_ packet: ByteBuffer, _ out: inout [Demuxed]) throws {
        let p = Array(packet.readableBytesView)
        let start = p[1] & 0x40 != 0
        let pid = Int(p[1] & 0x1F) << 8 | Int(p[2])
        let control = (p[3] >> 4) & 3
        var i = 4
        if control & 2 != 0 { i += 1 + Int(p[4]) }
        guard control & 1 != 0, i < p.count else { return }
        let payload = Array(p[i...])
        if pid == 0 {
            if start { parsePAT(payload) }
        } else if pid == pmtPID {
            if start { try parsePMT(payload) }
        } else if pid == videoPID || pid == audioPID {
            if start {
                if let done = pes.removeValue(forKey: pid) { try pesComplete(pid: pid, done, &out) }
                pes[pid] = ByteBuffer(bytes: payload)
            } else if pes[pid] != nil {
                pes[pid]!.writeBytes(payload)
                if pes[pid]!.readableBytes > 8 * 1024 * 1024 {
                    throw UnsupportedMedia("an MPEG-TS PES packet grew past 8 MiB")
                }
            }
        }
    }

    /// The section after the pointer field, bounded by its length (CRC excluded).
    private func section(_ payload: [UInt8]) -> [UInt8]? {
        guard let pointer = payload.first, payload.count > Int(pointer) + 4 else { return nil }
        let s = Array(payload[(Int(pointer) + 1)...])
        let length = Int(s[1] & 0x0F) << 8 | Int(s[2])
        guard length >= 9, s.count >= 3 + length else { return nil }
        return Array(s[0..<(3 + length - 4)])
    }

    private mutating func parsePAT(_ payload: [UInt8]) {
        guard let s = section(payload), s[0] == 0 else { return }
        var i = 8
        while i + 4 <= s.count {
            let program = Int(s[i]) << 8 | Int(s[i + 1])
            if program != 0 {
                pmtPID = Int(s[i + 2] & 0x1F) << 8 | Int(s[i + 3])
                return
            }
            i += 4
        }
    }

    private mutating func parsePMT(_ payload: [UInt8]) throws {
        guard let s = section(payload), s[0] == 2, s.count >= 12 else { return }
        var i = 12 + (Int(s[10] & 0x0F) << 8 | Int(s[11]))
        while i + 5 <= s.count {
            let type = s[i]
            let pid = Int(s[i + 1] & 0x1F) << 8 | Int(s[i + 2])
            switch type {
            case 0x1B: videoPID = pid
            case 0x0F: audioPID = pid
            case 0x24: throw UnsupportedMedia("the MPEG-TS video is HEVC: only H.264 remuxes to MP4 and HLS here")
            case 0x03, 0x04: throw UnsupportedMedia("the MPEG-TS audio is MP3: only AAC remuxes to MP4 and HLS here")
            default: break
            }
            i += 5 + (Int(s[i + 3] & 0x0F) << 8 | Int(s[i + 4]))
        }
    }

    private static func timestamp(_ b: ArraySlice<UInt8>) -> Int64 {
        let b = Array(b)
        return Int64(b[0] >> 1 & 7) << 30 | Int64(b[1]) << 22 | Int64(b[2] >> 1) << 15 | Int64(b[3]) << 7 | Int64(b[4] >> 1)
    }

    /// 33-bit timestamps wrap every 26.5 hours; unwrapped so they only grow.
    private mutating func unwrapped(_ t: Int64, pid: Int) -> Int64 {
        var state = unwrap[pid] ?? (t, 0)
        if t < state.last && state.last - t > 1 << 32 { state.wraps &+= 1 }
        state.last = t
        unwrap[pid] = state
        return t &+ (state.wraps &<< 33)
    }

    private mutating func pesComplete(pid: Int, _ data: ByteBuffer, _ out: inout [Demuxed]) throws {
        let p = Array(data.readableBytesView)
        guard p.count >= 9, p[0] == 0, p[1] == 0, p[2] == 1 else { return }
        let flags = p[7] >> 6
        let headerEnd = 9 + Int(p[8])
        guard flags & 2 != 0, headerEnd <= p.count, p.count >= 14 else { return }
        let pts = unwrapped(Self.timestamp(p[9..<14]), pid: pid)
        var dts = pts
        if flags == 3, p.count >= 19 { dts = pts &- (Self.timestamp(p[9..<14]) - Self.timestamp(p[14..<19])) }
        let body = p[headerEnd...]
        if pid == videoPID {
            try videoPES(body, dts: dts, cto: Int32(clamping: pts &- dts), &out)
        } else {
            try audioPES(body, pts: pts, &out)
        }
    }

    private mutating func videoPES(_ body: ArraySlice<UInt8>, dts: Int64, cto: Int32, _ out: inout [Demuxed]) throws {
        var sample = ByteBuffer()
        var sync = false
        for nal in Self.nalUnits(body) {
            guard let header = nal.first else { continue }
            switch header & 0x1F {
            case 7: sps = Array(nal)
            case 8: pps = Array(nal)
            case 9: continue  // access unit delimiter: MP4 has none
            case 5:
                sync = true
                fallthrough
            default:
                sample.writeInteger(UInt32(nal.count))
                sample.writeBytes(nal)
            }
        }
        if let sps, let pps {
            let config = try AVCConfig(sps: sps, pps: pps)
            if config != video {
                video = config
                out.append(.video(config))
            }
        }
        guard sample.readableBytes > 0 else { return }
        out.append(.frame(Frame(track: .video, dts: dts, compositionOffset: cto, sync: sync, data: sample)))
    }

    /// NAL units of an Annex B byte stream (split at 00 00 01 start codes).
    static func nalUnits(_ b: ArraySlice<UInt8>) -> [ArraySlice<UInt8>] {
        var units: [ArraySlice<UInt8>] = []
        var start: Int?
        var i = b.startIndex
        while i + 2 < b.endIndex {
            if b[i] == 0 && b[i + 1] == 0 && b[i + 2] == 1 {
                if let s = start {
                    var end = i
                    while end > s && b[end - 1] == 0 { end -= 1 }  // trailing zeros belong to a 4-byte start code
                    if end > s { units.append(b[s..<end]) }
                }
                i += 3
                start = i
            } else {
                i += 1
            }
        }
        if let s = start, s < b.endIndex { units.append(b[s...]) }
        return units
    }

    private mutating func audioPES(_ body: ArraySlice<UInt8>, pts: Int64, _ out: inout [Demuxed]) throws {
        var i = body.startIndex
        var t = pts
        while i + 7 <= body.endIndex {
            guard body[i] == 0xFF, body[i + 1] & 0xF0 == 0xF0 else { return }
            let headerSize = body[i + 1] & 1 == 1 ? 7 : 9
            let profile = Int(body[i + 2] >> 6)
            let rateIndex = Int(body[i + 2] >> 2 & 0x0F)
            let channels = Int(body[i + 2] & 1) << 2 | Int(body[i + 3] >> 6)
            let length = Int(body[i + 3] & 3) << 11 | Int(body[i + 4]) << 3 | Int(body[i + 5] >> 5)
            guard length > headerSize, i + length <= body.endIndex else { return }
            let config = try AACConfig(adtsProfile: profile, rateIndex: rateIndex, channels: channels)
            if config != audio {
                audio = config
                out.append(.audio(config))
            }
            out.append(.frame(Frame(track: .audio, dts: t, sync: true, data: ByteBuffer(bytes: body[(i + headerSize)..<(i + length)]))))
            t &+= Int64(1024 * 90_000 / config.sampleRate)
            i += length
        }
    }
}
