// The plugin creators of the library (static objects, alive while the library is loaded).
#include "plugins.h"

namespace ssmpose_trt {

nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count) {
  static SelectiveScanCreator scan;
  static DeformAggregateCreator deform;
  static SelectiveScan2DCreator scan_2d;
  static LayerNormCreator layer_norm;
  static AddLayerNormCreator add_layer_norm;
  static DepthwiseConvCreator depthwise_conv;
  static VSSBlockTailCreator vss_block_tail;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&scan,           &deform,         &scan_2d,
                                                                &layer_norm,     &add_layer_norm, &depthwise_conv,
                                                                &vss_block_tail};
  *count = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

}  // namespace ssmpose_trt
