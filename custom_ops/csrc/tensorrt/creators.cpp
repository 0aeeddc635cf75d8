// The plugin creators of the library (static objects, alive while the library is loaded).
#include "plugins.h"

namespace ssmpose_trt {

nvinfer1::IPluginCreatorInterface* const* plugin_creators(int32_t* count) {
  static SelectiveScanCreator scan;
  static DeformAggregateCreator deform;
  static nvinfer1::IPluginCreatorInterface* const creators[] = {&scan, &deform};
  *count = 2;
  return creators;
}

}  // namespace ssmpose_trt
