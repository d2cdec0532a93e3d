import CProtobufC
import NIOCore

/// Reads the fields of an unpacked C message by their index in the descriptor.
public struct ProtoReader {
    let base: UnsafeRawPointer
    public let descriptor: MessageDescriptor

    init(base: UnsafeRawPointer, descriptor: MessageDescriptor) {
        self.base = base
        self.descriptor = descriptor
    }

    /// Whether a singular field holds a value: for oneof members, whether it is the chosen one.
    public func isSet(_ index: Int) -> Bool {
        let f = descriptor.field(index)
        if f.isOneofMember {
            return base.loadUnaligned(fromByteOffset: f.quantifierOffset, as: UInt32.self) == f.number
        }
        if f.hasPresenceFlag {
            return base.loadUnaligned(fromByteOffset: f.quantifierOffset, as: protobuf_c_boolean.self) != 0
        }
        switch f.type {
        case .message, .string:
            return base.loadUnaligned(fromByteOffset: f.offset, as: UnsafeRawPointer?.self) != nil
        default:
            return true
        }
    }

    // Concrete accessors: generic ones are not specialised across modules and cost a
    // runtime metadata lookup per field.
    public func int32(_ index: Int) -> Int32 { isSet(index) ? load(index, Int32.self) : 0 }
    public func uint32(_ index: Int) -> UInt32 { isSet(index) ? load(index, UInt32.self) : 0 }
    public func int64(_ index: Int) -> Int64 { isSet(index) ? load(index, Int64.self) : 0 }
    public func uint64(_ index: Int) -> UInt64 { isSet(index) ? load(index, UInt64.self) : 0 }

    @inline(__always)
    private func load<T>(_ index: Int, _: T.Type) -> T {
        base.loadUnaligned(fromByteOffset: descriptor.field(index).offset, as: T.self)
    }

    public func repeatedInt32(_ index: Int) -> [Int32] { repeated(index) { $0.loadUnaligned(as: Int32.self) } }
    public func repeatedUInt32(_ index: Int) -> [UInt32] { repeated(index) { $0.loadUnaligned(as: UInt32.self) } }
    public func repeatedInt64(_ index: Int) -> [Int64] { repeated(index) { $0.loadUnaligned(as: Int64.self) } }
    public func repeatedUInt64(_ index: Int) -> [UInt64] { repeated(index) { $0.loadUnaligned(as: UInt64.self) } }

    public func float(_ index: Int) -> Float {
        isSet(index) ? base.loadUnaligned(fromByteOffset: descriptor.field(index).offset, as: Float.self) : 0
    }

    public func double(_ index: Int) -> Double {
        isSet(index) ? base.loadUnaligned(fromByteOffset: descriptor.field(index).offset, as: Double.self) : 0
    }

    public func bool(_ index: Int) -> Bool {
        isSet(index) && base.loadUnaligned(fromByteOffset: descriptor.field(index).offset, as: protobuf_c_boolean.self) != 0
    }

    public func string(_ index: Int) throws -> String {
        guard isSet(index) else { return "" }
        let f = descriptor.field(index)
        return try Self.string(at: base + f.offset, field: f, in: descriptor)
    }

    public func bytes(_ index: Int) -> ByteBuffer {
        guard isSet(index) else { return ByteBuffer() }
        return Self.bytes(at: base + descriptor.field(index).offset)
    }

    public func message<M: ProtoMessage>(_ index: Int, as: M.Type = M.self) throws -> M? {
        guard isSet(index),
            let p = base.loadUnaligned(fromByteOffset: descriptor.field(index).offset, as: UnsafeRawPointer?.self)
        else { return nil }
        return try M(reader: ProtoReader(base: p, descriptor: M.protoDescriptor))
    }

    /// The field number of the chosen member of the oneof that field `index` belongs to (0 = none).
    public func oneofCase(_ index: Int) -> UInt32 {
        base.loadUnaligned(fromByteOffset: descriptor.field(index).quantifierOffset, as: UInt32.self)
    }

    // MARK: repeated fields

    func repeated<T>(_ index: Int, _ element: (UnsafeRawPointer) throws -> T) rethrows -> [T] {
        let f = descriptor.field(index)
        let count = base.loadUnaligned(fromByteOffset: f.quantifierOffset, as: Int.self)
        guard count > 0, let array = base.loadUnaligned(fromByteOffset: f.offset, as: UnsafeRawPointer?.self) else {
            return []
        }
        let stride = f.type.cSize
        var out: [T] = []
        out.reserveCapacity(count)
        for i in 0..<count { out.append(try element(array + i * stride)) }
        return out
    }

    public func repeatedFloat(_ index: Int) -> [Float] { repeated(index) { $0.loadUnaligned(as: Float.self) } }
    public func repeatedDouble(_ index: Int) -> [Double] { repeated(index) { $0.loadUnaligned(as: Double.self) } }
    public func repeatedBool(_ index: Int) -> [Bool] {
        repeated(index) { $0.loadUnaligned(as: protobuf_c_boolean.self) != 0 }
    }

    public func repeatedString(_ index: Int) throws -> [String] {
        let f = descriptor.field(index)
        return try repeated(index) { try Self.string(at: $0, field: f, in: descriptor) }
    }

    public func repeatedBytes(_ index: Int) -> [ByteBuffer] { repeated(index) { Self.bytes(at: $0) } }

    public func repeatedMessage<M: ProtoMessage>(_ index: Int, as: M.Type = M.self) throws -> [M] {
        try repeated(index) { slot in
            guard let p = slot.loadUnaligned(as: UnsafeRawPointer?.self) else { return M() }
            return try M(reader: ProtoReader(base: p, descriptor: M.protoDescriptor))
        }
    }

    // MARK: raw slots, shared with the JSON converter

    static func string(at slot: UnsafeRawPointer, field: FieldDescriptor, in message: MessageDescriptor) throws -> String {
        guard let c = slot.loadUnaligned(as: UnsafePointer<CChar>?.self) else { return "" }
        guard let s = String(validatingCString: c) else {
            throw ProtoError("\(message.fullName).\(field.name) is not valid UTF-8")
        }
        return s
    }

    static func bytes(at slot: UnsafeRawPointer) -> ByteBuffer {
        let data = slot.loadUnaligned(as: ProtobufCBinaryData.self)
        guard data.len > 0, let p = data.data else { return ByteBuffer() }
        return ByteBuffer(bytes: UnsafeRawBufferPointer(start: p, count: data.len))
    }
}
