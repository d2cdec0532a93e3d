import NIOCore

/// Writes ISO BMFF boxes into a buffer: `box` writes the size once the body is known.
struct BoxWriter {
    var buffer: ByteBuffer

    init(capacity: Int = 1024) { buffer = ByteBufferAllocator().buffer(capacity: capacity) }

    mutating func box(_ type: String, _ body: (inout BoxWriter) -> Void) {
        let start = buffer.writerIndex
        buffer.writeInteger(UInt32(0))
        buffer.writeString(type)
        body(&self)
        buffer.setInteger(UInt32(buffer.writerIndex - start), at: start)
    }

    /// A "full box": version and 24-bit flags before the body.
    mutating func fullBox(_ type: String, version: UInt8 = 0, flags: UInt32 = 0, _ body: (inout BoxWriter) -> Void) {
        box(type) { w in
            w.u32(UInt32(version) << 24 | flags & 0xFF_FFFF)
            body(&w)
        }
    }

    mutating func u8(_ v: UInt8) { buffer.writeInteger(v) }
    mutating func u16(_ v: UInt16) { buffer.writeInteger(v) }
    mutating func u32(_ v: UInt32) { buffer.writeInteger(v) }
    mutating func u64(_ v: UInt64) { buffer.writeInteger(v) }
    mutating func i32(_ v: Int32) { buffer.writeInteger(v) }
    mutating func bytes(_ b: [UInt8]) { buffer.writeBytes(b) }
    mutating func zeros(_ n: Int) { buffer.writeRepeatingByte(0, count: n) }
    mutating func buffer(_ b: ByteBuffer) {
        var b = b
        buffer.writeBuffer(&b)
    }
}

/// The identity matrix every track and movie header carries.
let unityMatrix: [UInt32] = [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000]
