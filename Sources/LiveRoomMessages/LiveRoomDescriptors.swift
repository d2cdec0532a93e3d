import CLiveRoomProtos
import LiveRoomCodec

@_exported import LiveRoomCodec

/// The descriptors of every message and enum in Protos/, from the generated C registry.
public enum LiveRoomDescriptors {
    public static let pool: DescriptorPool = {
        let messages = (0..<lr_message_descriptor_count()).map { MessageDescriptor(lr_message_descriptor_at($0)!) }
        let enums = (0..<lr_enum_descriptor_count()).map { EnumDescriptor(lr_enum_descriptor_at($0)!) }
        return DescriptorPool(messages: messages, enums: enums)
    }()

    static func message(_ name: String) -> MessageDescriptor {
        guard let d = pool.messages[name] else { fatalError("generated code names \(name), which the C registry lacks: run tools/gen-protos") }
        return d
    }

    static func enumeration(_ name: String) -> EnumDescriptor {
        guard let d = pool.enums[name] else { fatalError("generated code names \(name), which the C registry lacks: run tools/gen-protos") }
        return d
    }
}
