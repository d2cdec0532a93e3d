import CProtobufC
import NIOCore

/// Writes fields into a C message being built for packing, by their index in the descriptor.
/// Everything it allocates lives in the encode's arena until `pack` has run.
public struct ProtoWriter {
    let base: UnsafeMutableRawPointer
    public let descriptor: MessageDescriptor
    let arena: Arena

    init(base: UnsafeMutableRawPointer, descriptor: MessageDescriptor, arena: Arena) {
        self.base = base
        self.descriptor = descriptor
        self.arena = arena
    }

    private func markPresent(_ f: FieldDescriptor) {
        if f.isOneofMember {
            base.storeBytes(of: f.number, toByteOffset: f.quantifierOffset, as: UInt32.self)
        } else if f.hasPresenceFlag {
            base.storeBytes(of: 1, toByteOffset: f.quantifierOffset, as: protobuf_c_boolean.self)
        }
    }

    public func int32(_ index: Int, _ value: Int32) { store(index, value) }
    public func uint32(_ index: Int, _ value: UInt32) { store(index, value) }
    public func int64(_ index: Int, _ value: Int64) { store(index, value) }
    public func uint64(_ index: Int, _ value: UInt64) { store(index, value) }

    @inline(__always)
    private func store<T>(_ index: Int, _ value: T) {
        let f = descriptor.field(index)
        markPresent(f)
        base.storeBytes(of: value, toByteOffset: f.offset, as: T.self)
    }

    public func repeatedInt32(_ index: Int, _ values: [Int32]) { repeated(index, values) { $0.storeBytes(of: $1, as: Int32.self) } }
    public func repeatedUInt32(_ index: Int, _ values: [UInt32]) { repeated(index, values) { $0.storeBytes(of: $1, as: UInt32.self) } }
    public func repeatedInt64(_ index: Int, _ values: [Int64]) { repeated(index, values) { $0.storeBytes(of: $1, as: Int64.self) } }
    public func repeatedUInt64(_ index: Int, _ values: [UInt64]) { repeated(index, values) { $0.storeBytes(of: $1, as: UInt64.self) } }

    public func float(_ index: Int, _ value: Float) {
        let f = descriptor.field(index)
        markPresent(f)
        base.storeBytes(of: value, toByteOffset: f.offset, as: Float.self)
    }

    public func double(_ index: Int, _ value: Double) {
        let f = descriptor.field(index)
        markPresent(f)
        base.storeBytes(of: value, toByteOffset: f.offset, as: Double.self)
    }

    public func bool(_ index: Int, _ value: Bool) {
        let f = descriptor.field(index)
        markPresent(f)
        base.storeBytes(of: value ? 1 : 0, toByteOffset: f.offset, as: protobuf_c_boolean.self)
    }

    public func string(_ index: Int, _ value: String) throws {
        let f = descriptor.field(index)
        markPresent(f)
        (base + f.offset).storeBytes(of: try cString(value, f), as: UnsafeRawPointer.self)
    }

    public func bytes(_ index: Int, _ value: ByteBuffer) {
        let f = descriptor.field(index)
        markPresent(f)
        (base + f.offset).storeBytes(of: binary(value), as: ProtobufCBinaryData.self)
    }

    public func message<M: ProtoMessage>(_ index: Int, _ value: M?) throws {
        guard let value else { return }
        let f = descriptor.field(index)
        markPresent(f)
        (base + f.offset).storeBytes(of: UnsafeRawPointer(try build(value)), as: UnsafeRawPointer.self)
    }

    // MARK: repeated

    private func repeated<C: Collection>(
        _ index: Int, _ values: C, _ store: (UnsafeMutableRawPointer, C.Element) throws -> Void
    ) rethrows {
        guard !values.isEmpty else { return }
        let f = descriptor.field(index)
        let stride = f.type.cSize
        let array = arena.allocate(stride * values.count)
        for (i, v) in values.enumerated() { try store(array + i * stride, v) }
        base.storeBytes(of: values.count, toByteOffset: f.quantifierOffset, as: Int.self)
        base.storeBytes(of: UnsafeRawPointer(array), toByteOffset: f.offset, as: UnsafeRawPointer.self)
    }

    public func repeatedFloat(_ index: Int, _ values: [Float]) {
        repeated(index, values) { $0.storeBytes(of: $1, as: Float.self) }
    }

    public func repeatedDouble(_ index: Int, _ values: [Double]) {
        repeated(index, values) { $0.storeBytes(of: $1, as: Double.self) }
    }

    public func repeatedBool(_ index: Int, _ values: [Bool]) {
        repeated(index, values) { $0.storeBytes(of: $1 ? 1 : 0, as: protobuf_c_boolean.self) }
    }

    public func repeatedString(_ index: Int, _ values: [String]) throws {
        let f = descriptor.field(index)
        try repeated(index, values) { $0.storeBytes(of: try cString($1, f), as: UnsafeRawPointer.self) }
    }

    public func repeatedBytes(_ index: Int, _ values: [ByteBuffer]) {
        repeated(index, values) { $0.storeBytes(of: binary($1), as: ProtobufCBinaryData.self) }
    }

    public func repeatedMessage<M: ProtoMessage>(_ index: Int, _ values: [M]) throws {
        try repeated(index, values) { $0.storeBytes(of: UnsafeRawPointer(try build($1)), as: UnsafeRawPointer.self) }
    }

    // MARK: helpers, shared with the JSON converter

    func build<M: ProtoMessage>(_ value: M) throws -> UnsafeMutableRawPointer {
        var nested = ProtoWriter(base: arena.newMessage(M.protoDescriptor), descriptor: M.protoDescriptor, arena: arena)
        try value.write(to: &nested)
        return nested.base
    }

    /// A NUL-terminated copy in the arena; a string with NUL inside cannot be packed by protobuf-c.
    func cString(_ value: String, _ f: FieldDescriptor) throws -> UnsafeRawPointer {
        var value = value
        return try value.withUTF8 { utf8 in
            if utf8.contains(0) {
                throw ProtoError("\(descriptor.fullName).\(f.name) contains a NUL character, which protobuf-c cannot encode")
            }
            let p = arena.allocate(utf8.count + 1)
            if let src = utf8.baseAddress { p.copyMemory(from: src, byteCount: utf8.count) }
            p.storeBytes(of: 0, toByteOffset: utf8.count, as: UInt8.self)
            return UnsafeRawPointer(p)
        }
    }

    func binary(_ value: ByteBuffer) -> ProtobufCBinaryData {
        let count = value.readableBytes
        guard count > 0 else { return ProtobufCBinaryData(len: 0, data: nil) }
        let p = arena.allocate(count)
        value.withUnsafeReadableBytes { p.copyMemory(from: $0.baseAddress!, byteCount: count) }
        return ProtobufCBinaryData(len: count, data: p.assumingMemoryBound(to: UInt8.self))
    }
}
