/// Cuts a media byte stream into chunks and marks keyframes where the container shows them:
/// FLV (video tag frame type 1; the FLV header, script data and codec sequence headers are
/// marked `header`) and MPEG-TS (packets with random_access_indicator). Anything else: every
/// chunk is a keyframe.
public struct MediaChunker {
    public struct Piece: Equatable {
        public var bytes: [UInt8]
        public var keyframe: Bool
        public var header: Bool
    }

    enum Format { case unknown, flv, ts, opaque }

    let chunkSize: Int
    var format = Format.unknown
    var buffer: [UInt8] = []

    public init(chunkSize: Int) { self.chunkSize = chunkSize }

    public mutating func feed(_ bytes: [UInt8]) -> [Piece] {
        buffer += bytes
        if format == .unknown {
            guard buffer.count >= 3 else { return [] }
            if buffer.starts(with: Array("FLV".utf8)) {
                format = .flv
            } else if buffer.count >= 188 * 2 ? (buffer[0] == 0x47 && buffer[188] == 0x47) : false {
                format = .ts
            } else if buffer.count >= 376 || buffer[0] != 0x47 {
                format = .opaque
            } else {
                return []
            }
        }
        switch format {
        case .flv: return flvPieces(final: false)
        case .ts: return tsPieces(final: false)
        default: return opaquePieces(final: false)
        }
    }

    public mutating func flush() -> [Piece] {
        switch format {
        case .flv: return flvPieces(final: true)
        case .ts: return tsPieces(final: true)
        default: return opaquePieces(final: true)
        }
    }

    mutating func opaquePieces(final: Bool) -> [Piece] {
        var out: [Piece] = []
        while buffer.count >= chunkSize || (final && !buffer.isEmpty) {
            let n = min(chunkSize, buffer.count)
            out.append(Piece(bytes: Array(buffer.prefix(n)), keyframe: true, header: false))
            buffer.removeFirst(n)
        }
        return out
    }

    /// One piece per FLV tag (tags are small); the header and codec configuration are headers.
    mutating func flvPieces(final: Bool) -> [Piece] {
        var out: [Piece] = []
        var i = 0
        if buffer.count >= 13, buffer.starts(with: Array("FLV".utf8)) {
            let headerSize = Int(buffer[5]) << 24 | Int(buffer[6]) << 16 | Int(buffer[7]) << 8 | Int(buffer[8])
            guard buffer.count >= headerSize + 4 else { return [] }
            out.append(Piece(bytes: Array(buffer[0..<(headerSize + 4)]), keyframe: false, header: true))
            i = headerSize + 4
        }
        while buffer.count - i >= 11 {
            let type = buffer[i] & 0x1F
            let size = Int(buffer[i + 1]) << 16 | Int(buffer[i + 2]) << 8 | Int(buffer[i + 3])
            let total = 11 + size + 4
            guard buffer.count - i >= total else { break }
            let body = i + 11
            var keyframe = false
            var header = type == 18  // script data (onMetaData)
            if type == 9, size > 1 {
                keyframe = buffer[body] >> 4 == 1
                let codec = buffer[body] & 0x0F
                if (codec == 7 || codec == 12), size > 1, buffer[body + 1] == 0 { header = true }  // AVC/HEVC sequence header
            } else if type == 8, size > 1, buffer[body] >> 4 == 10, buffer[body + 1] == 0 {
                header = true  // AAC sequence header
            }
            out.append(Piece(bytes: Array(buffer[i..<(i + total)]), keyframe: keyframe && !header, header: header))
            i += total
        }
        buffer.removeFirst(i)
        if final && !buffer.isEmpty {
            out.append(Piece(bytes: buffer, keyframe: false, header: false))
            buffer = []
        }
        return out
    }

    /// Whole 188-byte packets; a chunk starts at each random access point.
    mutating func tsPieces(final: Bool) -> [Piece] {
        var out: [Piece] = []
        var current: [UInt8] = []
        var currentKey = false
        var i = 0
        while buffer.count - i >= 188 {
            let p = Array(buffer[i..<(i + 188)])
            let hasAdaptation = p[3] & 0x20 != 0
            let rai = hasAdaptation && p[4] > 0 && p[5] & 0x40 != 0
            if rai && !current.isEmpty {
                out.append(Piece(bytes: current, keyframe: currentKey, header: false))
                current = []
            }
            if current.isEmpty { currentKey = rai }
            current += p
            if current.count >= chunkSize {
                out.append(Piece(bytes: current, keyframe: currentKey, header: false))
                current = []
            }
            i += 188
        }
        buffer.removeFirst(i)
        buffer = current + buffer
        if final && !buffer.isEmpty {
            out.append(Piece(bytes: buffer, keyframe: currentKey, header: false))
            buffer = []
        }
        return out
    }
}
