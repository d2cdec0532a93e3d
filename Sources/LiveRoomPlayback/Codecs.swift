import NIOCore

/// Why a stream cannot be remuxed for MP4 and HLS players (it still plays over Watch and HTTP-FLV).
public struct UnsupportedMedia: Error, Equatable, Sendable, CustomStringConvertible {
    public let reason: String
    public init(_ reason: String) { self.reason = reason }
    public var description: String { reason }
}

/// H.264 decoder configuration: the `avcC` record as FLV and MP4 both carry it, with what
/// players need to know before decoding (size, RFC 6381 codec string).
public struct AVCConfig: Equatable, Sendable {
    public let record: [UInt8]
    public let width: Int
    public let height: Int
    /// Bytes in each NAL unit's length prefix (MP4 and FLV samples use the record's choice).
    public let lengthSize: Int

    /// e.g. `avc1.64001f`: profile, compatibility and level from the record.
    public var codecString: String {
        "avc1." + record[1...3].map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
    }

    public init(record: [UInt8]) throws {
        guard record.count <= 4096 else { throw UnsupportedMedia("the H.264 configuration record is over 4 KiB") }
        guard record.count >= 7, record[0] == 1 else { throw UnsupportedMedia("the H.264 configuration record is malformed") }
        var i = 5
        let spsCount = Int(record[i] & 0x1F)
        i += 1
        guard spsCount >= 1, i + 2 <= record.count else { throw UnsupportedMedia("the H.264 configuration carries no SPS") }
        let length = Int(record[i]) << 8 | Int(record[i + 1])
        guard i + 2 + length <= record.count, length > 1 else { throw UnsupportedMedia("the H.264 configuration's SPS is truncated") }
        let size: (width: Int, height: Int)
        do { size = try Self.pictureSize(sps: Array(record[(i + 2)..<(i + 2 + length)])) } catch is BitReader.End {
            throw UnsupportedMedia("the H.264 SPS is truncated")
        }
        self.record = record
        self.width = size.width
        self.height = size.height
        self.lengthSize = Int(record[4] & 3) + 1
    }

    /// Builds the record from an SPS and a PPS (as MPEG-TS carries them, in band).
    public init(sps: [UInt8], pps: [UInt8]) throws {
        guard sps.count >= 4 else { throw UnsupportedMedia("the H.264 SPS is truncated") }
        // Lengths are 16-bit in the record; real parameter sets are tens of bytes.
        guard sps.count <= 1024, pps.count <= 1024 else { throw UnsupportedMedia("an H.264 SPS or PPS is over 1 KiB") }
        var r: [UInt8] = [1, sps[1], sps[2], sps[3], 0xFF, 0xE1]
        r += [UInt8(sps.count >> 8), UInt8(sps.count & 0xFF)] + sps
        r += [1, UInt8(pps.count >> 8), UInt8(pps.count & 0xFF)] + pps
        try self.init(record: r)
    }

    /// Width and height from a sequence parameter set (ITU-T H.264 7.3.2.1.1), cropping applied.
    static func pictureSize(sps nal: [UInt8]) throws -> (width: Int, height: Int) {
        var r = BitReader(rbsp: Array(nal.dropFirst()))  // past the NAL header
        let profile = try r.bits(8)
        _ = try r.bits(16)  // constraint flags, level
        _ = try r.ue()  // seq_parameter_set_id
        var chroma = 1
        if [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135].contains(profile) {
            chroma = try r.ue()
            if chroma == 3 { _ = try r.bits(1) }
            _ = try r.ue()
            _ = try r.ue()
            _ = try r.bits(1)
            if try r.bits(1) == 1 {
                for list in 0..<(chroma != 3 ? 8 : 12) where try r.bits(1) == 1 {
                    var last = 8
                    var next = 8
                    for _ in 0..<(list < 6 ? 16 : 64) {
                        if next != 0 { next = (last + (try r.se()) + 256) % 256 }
                        last = next == 0 ? last : next
                    }
                }
            }
        }
        _ = try r.ue()  // log2_max_frame_num_minus4
        let pocType = try r.ue()
        if pocType == 0 {
            _ = try r.ue()
        } else if pocType == 1 {
            _ = try r.bits(1)
            _ = try r.se()
            _ = try r.se()
            let cycle = try r.ue()
            guard cycle < 256 else { throw UnsupportedMedia("the H.264 SPS is malformed") }
            for _ in 0..<cycle { _ = try r.se() }
        }
        _ = try r.ue()  // max_num_ref_frames
        _ = try r.bits(1)
        let widthMbs = try r.ue() + 1
        let heightMapUnits = try r.ue() + 1
        let frameMbsOnly = try r.bits(1)
        if frameMbsOnly == 0 { _ = try r.bits(1) }
        _ = try r.bits(1)
        var crop = (left: 0, right: 0, top: 0, bottom: 0)
        if try r.bits(1) == 1 { crop = (try r.ue(), try r.ue(), try r.ue(), try r.ue()) }
        let unitX = chroma == 0 || chroma == 3 ? 1 : 2
        let unitY = (chroma == 1 ? 2 : 1) * (2 - frameMbsOnly)
        let width = widthMbs * 16 - (crop.left + crop.right) * unitX
        let height = (2 - frameMbsOnly) * heightMapUnits * 16 - (crop.top + crop.bottom) * unitY
        guard width > 0, height > 0, width <= 16384, height <= 16384 else { throw UnsupportedMedia("the H.264 SPS gives a picture of \(width)x\(height)") }
        return (width, height)
    }
}

/// AAC decoder configuration: the AudioSpecificConfig (ISO/IEC 14496-3 1.6.2.1).
public struct AACConfig: Equatable, Sendable {
    public let specificConfig: [UInt8]
    public let objectType: Int
    public let sampleRate: Int
    public let channels: Int

    public var codecString: String { "mp4a.40.\(objectType)" }

    static let rates = [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350]

    public init(specificConfig: [UInt8]) throws {
        // Its length is one byte in `esds`; real ones are 2 to 5 bytes.
        guard specificConfig.count <= 64 else { throw UnsupportedMedia("the AAC configuration is over 64 bytes") }
        var r = BitReader(bytes: specificConfig)
        do {
            var type = try r.bits(5)
            if type == 31 { type = 32 + (try r.bits(6)) }
            let index = try r.bits(4)
            let rate = index == 15 ? try r.bits(24) : (index < Self.rates.count ? Self.rates[index] : 0)
            let channels = try r.bits(4)
            guard rate > 0, rate <= 192_000 else { throw UnsupportedMedia("the AAC configuration names no usable sample rate (\(rate) Hz)") }
            self.objectType = type
            self.sampleRate = rate
            self.channels = channels
            self.specificConfig = specificConfig
        } catch is BitReader.End {
            throw UnsupportedMedia("the AAC configuration is truncated")
        }
    }

    /// From an ADTS header (as MPEG-TS carries AAC).
    public init(adtsProfile: Int, rateIndex: Int, channels: Int) throws {
        let type = adtsProfile + 1
        try self.init(specificConfig: [UInt8(type << 3 | rateIndex >> 1), UInt8((rateIndex & 1) << 7 | channels << 3)])
    }
}

/// Reads bits most significant first, with H.264's Exp-Golomb codes; `rbsp` strips emulation
/// prevention bytes first.
struct BitReader {
    struct End: Error {}
    private let bytes: [UInt8]
    private var position = 0

    init(bytes: [UInt8]) { self.bytes = bytes }

    init(rbsp nal: [UInt8]) {
        var out: [UInt8] = []
        out.reserveCapacity(nal.count)
        var zeros = 0
        for b in nal {
            if zeros >= 2 && b == 3 {
                zeros = 0
                continue
            }
            zeros = b == 0 ? zeros + 1 : 0
            out.append(b)
        }
        self.init(bytes: out)
    }

    mutating func bits(_ n: Int) throws -> Int {
        var v = 0
        for _ in 0..<n {
            guard position < bytes.count * 8 else { throw End() }
            v = v << 1 | Int(bytes[position >> 3] >> (7 - UInt8(position & 7)) & 1)
            position += 1
        }
        return v
    }

    mutating func ue() throws -> Int {
        var zeros = 0
        while try bits(1) == 0 {
            zeros += 1
            guard zeros < 32 else { throw End() }
        }
        return (1 << zeros) - 1 + (try bits(zeros))
    }

    mutating func se() throws -> Int {
        let k = try ue()
        return k & 1 == 1 ? (k + 1) / 2 : -(k / 2)
    }
}
