import CProtobufC
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A Swift value type backed by a protobuf-c message descriptor.
///
/// Encoding builds a temporary C struct in an arena and packs it with libprotobuf-c;
/// decoding unpacks with libprotobuf-c and copies every field out before the C memory
/// is freed, so no C pointer outlives the call.
public protocol ProtoMessage: Sendable, Hashable {
    static var protoDescriptor: MessageDescriptor { get }
    init()
    /// Reads the fields out of an unpacked C struct.
    init(reader: ProtoReader) throws
    /// Writes the fields into a C struct being built.
    func write(to writer: inout ProtoWriter) throws
    /// True for `AttachmentCarrying` messages; lets coders skip a dynamic cast for the others.
    static var carriesAttachment: Bool { get }
}

extension ProtoMessage {
    public static var carriesAttachment: Bool { false }

    /// Decodes the protobuf wire format.
    public init(serializedBytes bytes: UnsafeRawBufferPointer) throws {
        self = try ProtoCodec.decode(Self.protoDescriptor, bytes) { try Self(reader: $0) }
    }

    public init(serializedBytes bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try Self(serializedBytes: $0) }
    }

    /// Decodes the readable bytes of a buffer (without consuming them).
    public init(buffer: ByteBuffer) throws {
        self = try buffer.withUnsafeReadableBytes { try Self(serializedBytes: $0) }
    }

    /// Appends the protobuf wire format to `buffer`.
    public func serialize(into buffer: inout ByteBuffer) throws {
        try ProtoCodec.encode(Self.protoDescriptor, into: &buffer) { try self.write(to: &$0) }
    }

    public func serializedBytes() throws -> [UInt8] {
        var buffer = ByteBufferAllocator().buffer(capacity: 64)
        try serialize(into: &buffer)
        return buffer.readBytes(length: buffer.readableBytes) ?? []
    }
}

/// An open protobuf enum: unknown numbers survive a round trip.
public protocol ProtoEnum: RawRepresentable, Sendable, Hashable, CustomStringConvertible where RawValue == Int32 {
    static var protoDescriptor: EnumDescriptor { get }
    init(rawValue: Int32)
}

extension ProtoEnum {
    /// The proto name of the value, or its number when this build does not know it.
    public var name: String { Self.protoDescriptor.name(of: rawValue) ?? String(rawValue) }
    public var description: String { name }
}

/// Encode and decode through libprotobuf-c.
public enum ProtoCodec {
    /// Scratch memory on the stack for the C structs of one decode or encode: a typical message
    /// fits, so it costs no heap allocation; a larger one spills over to the heap.
    static let scratchBytes = 1024

    /// Unpacks `bytes`, hands a reader to `body`, then frees the C message.
    public static func decode<T>(
        _ descriptor: MessageDescriptor, _ bytes: UnsafeRawBufferPointer,
        _ body: (ProtoReader) throws -> T
    ) throws -> T {
        try withUnsafeTemporaryAllocation(byteCount: scratchBytes, alignment: 16) { scratch in
            var bump = ScratchAllocator(scratch)
            return try withUnsafeMutablePointer(to: &bump) { state in
                var allocator = ScratchAllocator.protobufC(state)
                var zero: UInt8 = 0  // protobuf-c wants a pointer even for no bytes
                let unpacked = withUnsafeMutablePointer(to: &zero) { empty in
                    protobuf_c_message_unpack(
                        descriptor.pointer, &allocator, bytes.count,
                        bytes.count > 0 ? bytes.baseAddress!.assumingMemoryBound(to: UInt8.self) : UnsafePointer(empty))
                }
                guard let message = unpacked else {
                    throw ProtoError("malformed \(descriptor.fullName): \(bytes.count) bytes that are not a valid protobuf encoding")
                }
                defer { protobuf_c_message_free_unpacked(message, &allocator) }
                return try body(ProtoReader(base: UnsafeRawPointer(message), descriptor: descriptor))
            }
        }
    }

    /// Builds a C message with `body` and appends its packed form to `buffer`.
    public static func encode(
        _ descriptor: MessageDescriptor, into buffer: inout ByteBuffer,
        _ body: (inout ProtoWriter) throws -> Void
    ) throws {
        try withUnsafeTemporaryAllocation(byteCount: scratchBytes, alignment: 16) { scratch in
            let arena = Arena(scratch: scratch)
            defer { arena.release() }
            var writer = ProtoWriter(base: arena.newMessage(descriptor), descriptor: descriptor, arena: arena)
            try body(&writer)
            let message = writer.base.assumingMemoryBound(to: ProtobufCMessage.self)
            let size = protobuf_c_message_get_packed_size(message)
            guard size > 0 else { return }
            buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { out in
                protobuf_c_message_pack(message, out.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
    }
}

/// A bump allocator for protobuf-c's unpack: allocations come from the scratch memory while it
/// lasts and from malloc after; freeing is a no-op inside the scratch.
struct ScratchAllocator {
    let base: UnsafeMutableRawPointer
    let capacity: Int
    var used = 0

    init(_ scratch: UnsafeMutableRawBufferPointer) {
        base = scratch.baseAddress!
        capacity = scratch.count
    }

    static func protobufC(_ state: UnsafeMutablePointer<ScratchAllocator>) -> ProtobufCAllocator {
        ProtobufCAllocator(
            alloc: { data, size in
                let s = data!.assumingMemoryBound(to: ScratchAllocator.self)
                let rounded = (max(size, 1) + 15) & ~15
                if s.pointee.used + rounded <= s.pointee.capacity {
                    let p = s.pointee.base + s.pointee.used
                    s.pointee.used += rounded
                    return p
                }
                return malloc(size)
            },
            free: { data, pointer in
                guard let pointer else { return }
                let s = data!.assumingMemoryBound(to: ScratchAllocator.self)
                let offset = pointer - UnsafeMutableRawPointer(s.pointee.base)
                if offset >= 0 && offset < s.pointee.capacity { return }
                heapFree(pointer)
            },
            allocator_data: UnsafeMutableRawPointer(state))
    }
}

private func heapFree(_ pointer: UnsafeMutableRawPointer) { free(pointer) }

/// Bump allocator for the temporary C structs of one encode: the caller's scratch first, then
/// heap blocks.
final class Arena {
    private var blocks: [UnsafeMutableRawPointer] = []  // heap blocks only; empty costs nothing
    private var current: UnsafeMutableRawPointer
    private var used = 0
    private var capacity: Int
    private static let blockSize = 1024

    init(scratch: UnsafeMutableRawBufferPointer) {
        current = scratch.baseAddress!
        capacity = scratch.count
    }

    /// Uninitialised memory: message structs are set by `protobuf_c_message_init`, and arrays
    /// and strings are written in full by the writer.
    func allocate(_ size: Int) -> UnsafeMutableRawPointer {
        let rounded = (max(size, 1) + 15) & ~15
        if used + rounded <= capacity {
            let p = current + used
            used += rounded
            return p
        }
        if rounded > Self.blockSize / 2 {
            let p = UnsafeMutableRawPointer.allocate(byteCount: rounded, alignment: 16)
            blocks.append(p)
            return p
        }
        let p = UnsafeMutableRawPointer.allocate(byteCount: Self.blockSize, alignment: 16)
        blocks.append(p)
        current = p
        used = rounded
        capacity = Self.blockSize
        return p
    }

    func newMessage(_ descriptor: MessageDescriptor) -> UnsafeMutableRawPointer {
        let p = allocate(Int(descriptor.pointer.pointee.sizeof_message))
        protobuf_c_message_init(descriptor.pointer, p)
        return p
    }

    func release() {
        for b in blocks { b.deallocate() }
        blocks.removeAll()
    }
}

/// A message whose large bytes field (media) travels beside the encoded body, so the same
/// buffer can be written to many connections without being copied into each message.
public protocol AttachmentCarrying {
    /// Moves the large field out (leaving it empty); nil when there is nothing to carry.
    mutating func takeAttachment() -> ByteBuffer?
    /// Puts a received attachment into the large field. Returns why it cannot (the message has
    /// no such field set, or the field already holds bytes sent inline), or nil.
    mutating func putAttachment(_ attachment: ByteBuffer) -> String?
}
