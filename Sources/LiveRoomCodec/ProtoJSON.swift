import CProtobufC
import Foundation
import NIOCore

/// Converts between protobuf bytes and JSON for any message, driven only by its descriptor.
///
/// Follows protobuf's JSON mapping where it matters to people typing JSON: proto field names
/// (lowerCamelCase also accepted), enums by name (numbers accepted), 64-bit integers as strings
/// (numbers accepted), bytes as base64. Output includes fields at their default values.
public enum ProtoJSON {
    /// Protobuf bytes to a JSON object (as `JSONSerialization` values).
    public static func object(from bytes: ByteBuffer, as descriptor: MessageDescriptor) throws -> [String: Any] {
        try bytes.withUnsafeReadableBytes { raw in
            try ProtoCodec.decode(descriptor, raw) { reader in try object(reader.base, descriptor) }
        }
    }

    /// Protobuf bytes to JSON text.
    public static func text(from bytes: ByteBuffer, as descriptor: MessageDescriptor, pretty: Bool = false) throws -> String {
        let obj = try object(from: bytes, as: descriptor)
        var options: JSONSerialization.WritingOptions = [.sortedKeys, .withoutEscapingSlashes]
        if pretty { options.insert(.prettyPrinted) }
        let data = try JSONSerialization.data(withJSONObject: obj, options: options)
        return String(decoding: data, as: UTF8.self)
    }

    /// JSON text to protobuf bytes.
    public static func encode(text: String, as descriptor: MessageDescriptor) throws -> ByteBuffer {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        let parsed: Any
        do {
            parsed = try JSONSerialization.jsonObject(with: Data((trimmed.isEmpty ? "{}" : trimmed).utf8), options: [])
        } catch {
            throw ProtoError("not valid JSON: \(text.prefix(80))")
        }
        guard let dict = parsed as? [String: Any] else {
            throw ProtoError("\(descriptor.fullName) must be a JSON object, got: \(text.prefix(80))")
        }
        return try encode(object: dict, as: descriptor)
    }

    /// A JSON object to protobuf bytes.
    public static func encode(object: [String: Any], as descriptor: MessageDescriptor) throws -> ByteBuffer {
        var buffer = ByteBuffer()
        try ProtoCodec.encode(descriptor, into: &buffer) { writer in
            try fill(writer.base, descriptor, object, writer.arena)
        }
        return buffer
    }

    // MARK: decoding

    private static func object(_ base: UnsafeRawPointer, _ d: MessageDescriptor) throws -> [String: Any] {
        let reader = ProtoReader(base: base, descriptor: d)
        var out: [String: Any] = [:]
        for i in 0..<d.fieldCount {
            let f = d.field(i)
            if f.isRepeated {
                let count = base.loadUnaligned(fromByteOffset: f.quantifierOffset, as: Int.self)
                let array = base.loadUnaligned(fromByteOffset: f.offset, as: UnsafeRawPointer?.self)
                var items: [Any] = []
                if count > 0, let array {
                    for j in 0..<count { items.append(try value(array + j * f.type.cSize, f, d)) }
                }
                out[f.name] = items
            } else if reader.isSet(i) {
                out[f.name] = try value(base + f.offset, f, d)
            } else if !f.isOneofMember && f.type != .message {
                out[f.name] = try value(base + f.offset, f, d)
            }
        }
        return out
    }

    private static func value(_ slot: UnsafeRawPointer, _ f: FieldDescriptor, _ d: MessageDescriptor) throws -> Any {
        switch f.type {
        case .int32, .sint32, .sfixed32: return Int(slot.loadUnaligned(as: Int32.self))
        case .uint32, .fixed32: return Int(slot.loadUnaligned(as: UInt32.self))
        case .int64, .sint64, .sfixed64: return String(slot.loadUnaligned(as: Int64.self))
        case .uint64, .fixed64: return String(slot.loadUnaligned(as: UInt64.self))
        case .float: return Double(slot.loadUnaligned(as: Float.self))
        case .double: return slot.loadUnaligned(as: Double.self)
        case .bool: return slot.loadUnaligned(as: protobuf_c_boolean.self) != 0
        case .enumeration:
            let n = slot.loadUnaligned(as: Int32.self)
            return f.enumType?.name(of: n) ?? Int(n)
        case .string: return try ProtoReader.string(at: slot, field: f, in: d)
        case .bytes:
            let b = ProtoReader.bytes(at: slot)
            return Data(b.readableBytesView).base64EncodedString()
        case .message:
            guard let p = slot.loadUnaligned(as: UnsafeRawPointer?.self), let md = f.messageType else { return NSNull() }
            return try object(p, md)
        }
    }

    // MARK: encoding

    private static func fill(_ base: UnsafeMutableRawPointer, _ d: MessageDescriptor, _ obj: [String: Any], _ arena: Arena) throws {
        var writer = ProtoWriter(base: base, descriptor: d, arena: arena)
        for (key, raw) in obj.sorted(by: { $0.key < $1.key }) {
            guard let i = d.fieldIndex(named: key) else {
                let names = d.fields.map(\.name).joined(separator: ", ")
                throw ProtoError("\(d.fullName) has no field \"\(key)\" (fields: \(names))")
            }
            let f = d.field(i)
            if raw is NSNull { continue }
            if f.isRepeated {
                guard let items = raw as? [Any] else { throw ProtoError("\(d.fullName).\(f.name) must be a JSON array") }
                guard !items.isEmpty else { continue }
                let stride = f.type.cSize
                let array = arena.allocate(stride * items.count)
                for (j, item) in items.enumerated() {
                    try store(item, into: array + j * stride, f, d, &writer)
                }
                base.storeBytes(of: items.count, toByteOffset: f.quantifierOffset, as: Int.self)
                base.storeBytes(of: UnsafeRawPointer(array), toByteOffset: f.offset, as: UnsafeRawPointer.self)
            } else {
                if f.isOneofMember {
                    base.storeBytes(of: f.number, toByteOffset: f.quantifierOffset, as: UInt32.self)
                } else if f.hasPresenceFlag {
                    base.storeBytes(of: 1, toByteOffset: f.quantifierOffset, as: protobuf_c_boolean.self)
                }
                try store(raw, into: base + f.offset, f, d, &writer)
            }
        }
    }

    private static func store(
        _ raw: Any, into slot: UnsafeMutableRawPointer, _ f: FieldDescriptor, _ d: MessageDescriptor,
        _ writer: inout ProtoWriter
    ) throws {
        let what = "\(d.fullName).\(f.name)"
        switch f.type {
        case .int32, .sint32, .sfixed32: slot.storeBytes(of: try integer(raw, Int32.self, what), as: Int32.self)
        case .uint32, .fixed32: slot.storeBytes(of: try integer(raw, UInt32.self, what), as: UInt32.self)
        case .int64, .sint64, .sfixed64: slot.storeBytes(of: try integer(raw, Int64.self, what), as: Int64.self)
        case .uint64, .fixed64: slot.storeBytes(of: try integer(raw, UInt64.self, what), as: UInt64.self)
        case .float: slot.storeBytes(of: Float(try floating(raw, what)), as: Float.self)
        case .double: slot.storeBytes(of: try floating(raw, what), as: Double.self)
        case .bool:
            guard isBool(raw), let b = raw as? Bool else { throw ProtoError("\(what) must be true or false") }
            slot.storeBytes(of: b ? 1 : 0, as: protobuf_c_boolean.self)
        case .enumeration:
            let e = f.enumType!
            let number: Int32
            if let name = raw as? String {
                guard let n = e.number(of: name) else {
                    throw ProtoError("\(what): \"\(name)\" is not a \(e.fullName) (values: \(e.values.map(\.name).joined(separator: ", ")))")
                }
                number = n
            } else {
                number = try integer(raw, Int32.self, what)
            }
            slot.storeBytes(of: number, as: Int32.self)
        case .string:
            guard let s = raw as? String else { throw ProtoError("\(what) must be a string") }
            slot.storeBytes(of: try writer.cString(s, f), as: UnsafeRawPointer.self)
        case .bytes:
            guard let s = raw as? String, let data = Data(base64Encoded: s) else {
                throw ProtoError("\(what) must be base64 text")
            }
            slot.storeBytes(of: writer.binary(ByteBuffer(bytes: data)), as: ProtobufCBinaryData.self)
        case .message:
            guard let obj = raw as? [String: Any], let md = f.messageType else {
                throw ProtoError("\(what) must be a JSON object")
            }
            let nested = writer.arena.newMessage(md)
            try fill(nested, md, obj, writer.arena)
            slot.storeBytes(of: UnsafeRawPointer(nested), as: UnsafeRawPointer.self)
        }
    }

    /// JSON true/false, told apart from the numbers 1 and 0 (which Foundation also bridges to Bool).
    private static func isBool(_ raw: Any) -> Bool {
        if let n = raw as? NSNumber { return String(cString: n.objCType) == "c" }
        return raw is Bool
    }

    private static func integer<T: FixedWidthInteger>(_ raw: Any, _: T.Type, _ what: String) throws -> T {
        if let s = raw as? String, let v = T(s) { return v }
        if let n = raw as? NSNumber, !isBool(raw) {
            let d = n.doubleValue
            if d.rounded() == d, let v = T(exactly: d) { return v }
            if let v = T(exactly: n.int64Value), Double(n.int64Value) == d { return v }
        }
        throw ProtoError("\(what) must be an integer in the range of \(T.self), got \(raw)")
    }

    private static func floating(_ raw: Any, _ what: String) throws -> Double {
        if let n = raw as? NSNumber, !isBool(raw) { return n.doubleValue }
        if let s = raw as? String, let v = Double(s) { return v }
        throw ProtoError("\(what) must be a number")
    }
}
